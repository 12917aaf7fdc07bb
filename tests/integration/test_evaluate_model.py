"""``evaluate-model``: a published version scored on a list through the service's decoding and predictor."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import paddle
import pytest

from service.contract.manifest import Preprocessing
from service.contract.preprocess import preprocess_clip
from service.decoding import read_clip
from service.settings import ServiceSettings
from training.checkpoint import build_model, save_checkpoint
from training.cli import main
from training.config import load_config
from training.data import ClipDataset, collate_clips
from training.published import ListSource, evaluate_published
from training.workflows import evaluate_checkpoint, export_checkpoint

NAMES = ["a", "b", "c", "portrait"]


@pytest.fixture(scope="module")
def published(videos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A 3-class tiny model whose scores depend on the clip, its checkpoint, config and one published version;
    the list labels two clips with the model's own answer and two with another class."""
    root = tmp_path_factory.mktemp("published")
    probe = root / "probe.list"
    probe.write_text("".join(f"{videos[n]} 0\n" for n in NAMES))
    cfg = load_config("tiny", ["model.num_classes=3", "model.num_seg=8", "data.short_side=128", "data.crop_size=112",
                               "name=scored", f"data.valid_list={probe}", "data.num_workers=0"])
    paddle.seed(3)
    model = build_model(cfg)
    clips = collate_clips([ClipDataset(cfg, str(probe), train=False)[i] for i in range(len(NAMES))])["clips"]
    with paddle.no_grad():  # untrained BN statistics saturate every output: settle them, widen the fc
        for _ in range(30):
            model(paddle.to_tensor(clips))
    model.head.fc.weight.set_value(paddle.randn(model.head.fc.weight.shape) * 0.5)
    model.eval()
    answers = model(paddle.to_tensor(clips)).numpy().argmax(axis=1)
    labels = [int(answers[0]), int(answers[1]), int(answers[2] + 1) % 3, int(answers[3] + 2) % 3]
    scored = root / "scored.list"
    scored.write_text("".join(f"{n}.mp4 {label}\n" for n, label in zip(NAMES, labels, strict=True)))
    checkpoint = save_checkpoint(root / "run", model, cfg, 1, {})
    repo = root / "repo"
    version = export_checkpoint(cfg, checkpoint, repo)
    return {"cfg": cfg, "checkpoint": checkpoint, "version": version, "list": scored, "labels": labels,
            "answers": answers, "prefix": str(next(iter(videos.values())).parent)}


@pytest.mark.parametrize(("backend", "batch"), [("paddle", 1), ("onnxruntime", 3)])
def test_a_published_version_scores_as_its_checkpoint(published: dict[str, object], tmp_path: Path, backend: str,
                                                      batch: int) -> None:
    """With each backend the service's settings can choose, and batches of the settings' size (3: a short last)."""
    cfg, version = published["cfg"], published["version"]
    source = ListSource(published["list"], data_prefix=published["prefix"])  # type: ignore[arg-type]
    settings = ServiceSettings(backend=backend, max_batch_size=batch, queue_capacity=8)
    served = evaluate_published(version, source, tmp_path / "served", 0, settings)  # type: ignore[arg-type]
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_prefix": published["prefix"]})})
    trained = evaluate_checkpoint(cfg, published["checkpoint"], str(published["list"]), tmp_path / "trained")
    assert served.count == trained.count == 4 and not served.skipped
    assert served.top1 == trained.top1 == 0.5  # two clips carry the model's own answer, two another class
    np.testing.assert_array_equal(served.confusion, trained.confusion)
    assert served.confusion.sum() == 4 and served.loss == pytest.approx(trained.loss, abs=1e-4)
    figures = json.loads((tmp_path / "served" / "evaluation.json").read_text())
    assert figures["name"] == "scored" and figures["version"] == int(version.name)
    assert (figures["backend"], figures["device"]) == (backend, "cpu") and figures["top1"] == 0.5
    assert (tmp_path / "served" / "confusion_matrix.png").stat().st_size > 0


def test_the_command_takes_the_version_the_service_would_serve_and_writes_outside_the_repository(
        published: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    version: Path = published["version"]  # type: ignore[assignment]
    repo = tmp_path / "repo"
    shutil.copytree(version.parent.parent, repo)
    model_dir = repo / version.parent.name
    shutil.copytree(model_dir / version.name, model_dir / "7")  # a later version, same network
    shutil.copytree(model_dir / version.name, model_dir / "9")  # the highest, but refused: no parameters
    (model_dir / "9" / "model.pdiparams").unlink()
    before = sorted(str(p.relative_to(repo)) for p in repo.rglob("*"))
    monkeypatch.chdir(tmp_path)
    argv = ["evaluate-model", str(model_dir), "--list", str(published["list"]), "--prefix", str(published["prefix"]),
            "--workers", "0"]
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    assert "top-1 0.5000" in capsys.readouterr().out
    assert f"{model_dir / '9'} cannot serve: model.pdiparams is missing" in caplog.text
    assert "the service would serve version 7 instead" in caplog.text
    figures = json.loads((tmp_path / "runs" / "evaluate" / "scored" / "7" / "evaluation.json").read_text())
    assert figures["version"] == 7 and figures["count"] == 4
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == before  # nothing written there
    monkeypatch.setenv("TSM_MODEL_VERSIONS", f'{{"scored": {version.name}}}')  # a pin, as the service honours it
    assert main(argv) == 0
    assert (tmp_path / "runs" / "evaluate" / "scored" / version.name / "evaluation.json").is_file()
    monkeypatch.setenv("TSM_MODEL_VERSIONS", '{"scored": 8}')
    caplog.clear()
    assert main(argv) == 2 and "scored is pinned to version 8 (TSM_MODEL_VERSIONS)" in caplog.text


def test_refusals_are_one_sentence(published: dict[str, object], tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    version: Path = published["version"]  # type: ignore[assignment]
    caplog.set_level(logging.ERROR)
    assert main(["evaluate-model", str(tmp_path), "--list", str(published["list"])]) == 2
    assert "neither a published version" in caplog.text
    broken = tmp_path / "broken" / "1"
    shutil.copytree(version, broken)
    (broken / "model.pdiparams").unlink()
    caplog.clear()
    assert main(["evaluate-model", str(broken), "--list", str(published["list"])]) == 2
    assert "model.pdiparams is missing from" in caplog.text
    wrong = tmp_path / "wrong.list"
    wrong.write_text("a.mp4 0\nb.mp4 5\n")  # the model has 3 classes
    caplog.clear()
    assert main(["evaluate-model", str(version), "--list", str(wrong), "--workers", "0"]) == 2
    assert "wrong.list:2: label 5 is outside 0..2" in caplog.text
    caplog.clear()
    assert main(["evaluate-model", str(version), "--list", str(published["list"]), "--workers", "0"]) == 2
    assert "no clip of" in caplog.text and "check --prefix (empty)" in caplog.text  # its paths are relative


def test_the_manifests_preprocessing_is_used(videos: dict[str, Path], tmp_path: Path) -> None:
    """A model imported with predict.py's fixed 4:3 resize is evaluated with it, not with the config's aspect."""
    (tmp_path / "one.list").write_text(f"{videos['b']} 0\n")
    cfg = load_config("tiny", ["model.num_classes=3", "model.num_seg=8", "data.short_side=128", "data.crop_size=112"])
    fixed = Preprocessing(num_seg=8, short_side=128, crop_size=112, fixed_ratio=True)
    clip = ClipDataset(cfg, str(tmp_path / "one.list"), train=False, spec=fixed)[0][0]
    kept = ClipDataset(cfg, str(tmp_path / "one.list"), train=False)[0][0]
    assert clip is not None and kept is not None
    np.testing.assert_array_equal(clip, preprocess_clip(read_clip(videos["b"], fixed)[0], fixed))
    assert np.abs(clip - kept).max() > 0.1  # 176x144 scaled to 128x170 is not 156x128


def test_the_services_settings_are_refused_and_warned_about_as_tsm_serve_does(
        published: dict[str, object], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    argv = ["evaluate-model", str(published["version"]), "--list", str(published["list"]), "--prefix",
            str(published["prefix"]), "--workers", "0", "--out", str(published["version"].parent.parent.parent / "x")]
    monkeypatch.setenv("TSM_BACKEND", "foo")
    assert main(argv) == 2
    assert "evaluate-model: refused settings:\n  TSM_BACKEND: Input should be" in caplog.text
    monkeypatch.delenv("TSM_BACKEND")
    monkeypatch.setenv("TSM_MAX_BACH_SIZE", "4")  # misspelt: it would score with the default batch size
    caplog.clear()
    assert main(argv) == 0
    assert "TSM_MAX_BACH_SIZE is not a setting (did you mean TSM_MAX_BATCH_SIZE?); it is ignored" in caplog.text
