"""``python -m training``: wrong input ends in one clear message and exit 2, before any long work."""

from pathlib import Path

import numpy as np
import paddle
import pytest

from service.contract.manifest import Manifest, ModelIO, Preprocessing
from tests.oracles import paddle_logits
from training import workflows
from training.checkpoint import build_model
from training.cli import main
from training.config import load_config
from training.export import export_to_repo
from training.tsm import build_tsm
from training.workflows import evaluate_checkpoint, export_checkpoint


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """Fresh weights of the ``tiny`` config's network, saved as a training checkpoint."""
    params = tmp_path / "ckpt" / "tiny.pdparams"
    params.parent.mkdir()
    paddle.save(build_model(load_config("tiny")).state_dict(), str(params))
    return params


def _error(caplog: pytest.LogCaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    return caplog.records[-1].getMessage()


def test_train_without_lists_names_the_missing_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = f"train.output_dir={tmp_path / 'run'}"
    assert "data.train_list is not set" in _error(caplog, ["train", "-c", "tiny", "-o", out])
    listed = tmp_path / "train.list"
    listed.write_text("clip.mp4 0\n")
    message = _error(caplog, ["train", "-c", "tiny", "--validate", "-o", out, "-o", f"data.train_list={listed}"])
    assert "data.valid_list is not set" in message
    assert not (tmp_path / "run").exists()


def test_evaluate_without_a_list(checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    message = _error(caplog, ["evaluate", "-c", "tiny", "--checkpoint", str(checkpoint)])
    assert "data.valid_list is empty" in message


def test_unreadable_configs_end_in_a_message(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [depth: 18\n")
    assert "broken.yaml" in _error(caplog, ["train", "-c", str(broken)])
    assert _error(caplog, ["train", "-c", str(tmp_path)])  # a folder: IsADirectoryError


def test_a_config_that_is_not_a_mapping_fails_cleanly_with_an_override(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n")  # was an AttributeError traceback (list.setdefault) once -o was given
    assert "must be a mapping" in _error(caplog, ["train", "-c", str(listed), "-o", "train.epochs=1"])
    assert "train.epochs is a setting" in _error(caplog, ["train", "-c", "tiny", "-o", "train.epochs.x=1"])


def test_an_unknown_config_name_lists_the_names(caplog: pytest.LogCaptureFixture) -> None:
    message = _error(caplog, ["train", "-c", "nope"])
    assert "no config file or name 'nope'" in message and "tiny" in message


def test_extract_frames_with_no_decodable_video_fails_and_publishes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "train.list").write_text("clip_1.mp4 0\nclip_2.mp4 1\n")
    monkeypatch.chdir(tmp_path)  # the list's paths are relative to set/, not to here
    message = _error(caplog, ["extract-frames", "set/train.list", "--out", str(tmp_path / "out")])
    assert "none of the 2 videos of set/train.list could be read" in message
    assert not (tmp_path / "out" / "train.list").exists()


def test_wrong_label_count_fails_before_evaluating(tmp_path: Path, checkpoint: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def evaluate_not_expected(*args: object) -> None:
        raise AssertionError("evaluated with a label list that cannot be used")

    monkeypatch.setattr(workflows, "evaluate", evaluate_not_expected)
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    (tmp_path / "val.list").write_text("clip.mp4 0\n")
    cfg = load_config("tiny", [f"data.labels={tmp_path / 'labels.txt'}", f"data.valid_list={tmp_path / 'val.list'}"])
    with pytest.raises(ValueError, match=r"has 3 labels, model\.num_classes is 4"):
        evaluate_checkpoint(cfg, checkpoint, out_dir=tmp_path / "out")


def test_export_refuses_an_escaping_name_before_exporting(tmp_path: Path, checkpoint: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    repo = tmp_path / "box" / "repo"
    message = _error(caplog, ["export", "-c", "tiny", "--checkpoint", str(checkpoint), "--repo", str(repo),
                              "--name", "../escaped"])
    assert "invalid model name '../escaped'" in message
    assert not (tmp_path / "box").exists()
    with pytest.raises(ValueError, match="invalid model name"):
        export_checkpoint(load_config("tiny", ["name=a..b"]), checkpoint, repo)


@pytest.mark.parametrize("source", ["TSM.pdiparams", "TSM.onnx", "TSM"])
def test_import_accepts_only_checkpoints_and_model_files(tmp_path: Path, source: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    # A .pdiparams used to reach Paddle as a model file: IndexError basic_string::at.
    spec = Preprocessing(num_seg=4, short_side=40, crop_size=32)
    manifest = Manifest(name="net", version=1, labels=list("abcde"), preprocessing=spec,
                        io=ModelIO(input_shape=(-1, 4, 3, 32, 32)), depth=18, base_width=8)
    exported = export_to_repo(build_tsm(18, num_classes=5, num_seg=4, base_width=8), tmp_path / "src", manifest)
    target = tmp_path / source
    target.write_bytes((exported / "model.pdiparams").read_bytes())
    message = _error(caplog, ["import-paddlevideo", str(target), "--repo", str(tmp_path / "repo")])
    assert "give a PaddleVideo checkpoint (.pdparams) or the model file of an export" in message
    assert not (tmp_path / "repo").exists()


def test_import_reports_a_missing_source(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert "not found" in _error(caplog, ["import-paddlevideo", str(tmp_path / "TSM_k400.pdparams")])


def test_import_tsn_from_the_command_line(tmp_path: Path) -> None:
    tsn = build_tsm(18, num_classes=3, num_seg=4, shift=False, base_width=8)
    params = tmp_path / "TSN.pdparams"
    paddle.save(tsn.state_dict(), str(params))
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    assert main(["import-paddlevideo", str(params), "--tsn", "--labels", str(tmp_path / "labels.txt"),
                 "--repo", str(tmp_path / "repo"), "--name", "tsn", "--num-seg", "4", "--short-side", "128",
                 "--crop-size", "112"]) == 0
    folder = tmp_path / "repo" / "tsn" / "1"
    manifest = Manifest.read(folder)
    assert (manifest.shift, manifest.backbone) == (False, "ResNetTSN-18")
    spec = manifest.preprocessing
    assert (spec.short_side, spec.crop_size, manifest.io.input_shape) == (128, 112, (-1, 4, 3, 112, 112))
    x = np.random.default_rng(4).standard_normal((1, 4, 3, 112, 112)).astype(np.float32)
    tsn.eval()
    np.testing.assert_allclose(paddle_logits(folder, x), tsn(paddle.to_tensor(x)).numpy(), rtol=1e-4, atol=1e-5)


def test_import_pipeline_sets_both_preprocessing_options(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """PaddleVideo preprocesses one way for its test (the published accuracy), another in tools/predict.py: the
    choice is one option, and half of it alone is served with a warning."""
    params = tmp_path / "TSM.pdparams"
    paddle.save(build_tsm(18, num_classes=3, num_seg=4, base_width=8).state_dict(), str(params))
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    base = ["import-paddlevideo", str(params), "--labels", str(tmp_path / "labels.txt"), "--repo",
            str(tmp_path / "repo"), "--num-seg", "4"]

    def served_with(*options: str) -> tuple[str, bool]:
        assert main([*base, "--name", f"m{len(list((tmp_path / 'repo').glob('*')))}", *options]) == 0
        folder = max((tmp_path / "repo").glob("*/1"), key=lambda f: f.stat().st_mtime_ns)
        spec = Manifest.read(folder).preprocessing
        return spec.sampling, spec.fixed_ratio

    assert served_with() == ("paddlevideo_test", False)
    assert served_with("--pipeline", "predict") == ("paddlevideo_predict", True)
    assert served_with("--sampling", "paddlevideo_predict", "--fixed-ratio") == ("paddlevideo_predict", True)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert served_with("--sampling", "paddlevideo_predict") == ("paddlevideo_predict", False)
    assert any("neither PaddleVideo's test pipeline nor tools/predict.py's" in r.getMessage() for r in caplog.records)
    assert "not both" in _error(caplog, [*base, "--pipeline", "test", "--fixed-ratio"])


@pytest.mark.parametrize("command", [["export", "-c", "tiny", "--checkpoint", "x.pdparams"],
                                     ["import-paddlevideo", "x.pdparams"], ["demo"], ["ensure-model"]])
def test_repo_defaults_to_the_services_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               command: list[str]) -> None:
    """In the images TSM_MODEL_REPO=/models: an export without --repo lands where the API reads, not in /app."""
    from training.cli_args import build_parser

    monkeypatch.setenv("TSM_MODEL_REPO", str(tmp_path / "models"))
    assert build_parser().parse_args(command).repo == tmp_path / "models"
    monkeypatch.delenv("TSM_MODEL_REPO")
    assert build_parser().parse_args(command).repo == Path("model_repo")


def test_ensure_model_names_the_repository_it_was_given(model_repo: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The operator's --repo, not the literal default 'model_repo', whether a model is there or not."""
    import training.demo

    built: list[Path] = []
    monkeypatch.setattr(training.demo, "run_demo", lambda repo, workdir: built.append(repo))
    assert main(["ensure-model", "--repo", str(model_repo)]) == 0
    assert capsys.readouterr().out == f"{model_repo} already holds tiny v1; not rebuilding\n"
    assert built == []
    empty = tmp_path / "empty_repo"
    assert main(["ensure-model", "--repo", str(empty)]) == 0
    assert capsys.readouterr().out.startswith(f"{empty} holds no model: building the demo model")
    assert built == [empty]


@pytest.mark.parametrize("argv", [["demo", "--procs", "0"], ["demo", "--procs", "-1"],
                                  ["dataset", "--val", "0"], ["dataset", "--train", "-1"],
                                  ["extract-frames", "a.list", "--out", "x",
                                                                "--short-side", "0"],
                                  ["--log-level", "loud", "ensure-model"]])
def test_out_of_range_arguments_are_refused_before_any_work(argv: list[str], capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "must be 1 or more" in err or "must be 0 or more" in err or "invalid choice: 'LOUD'" in err, err


def test_resume_refuses_an_explicit_output_dir_of_another_run(tmp_path: Path, checkpoint: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A resumed run continues in its checkpoint's folder: -o train.output_dir naming another would mix runs."""
    listed = tmp_path / "train.list"
    listed.write_text("clip.mp4 0\n")
    other = tmp_path / "other"
    message = _error(caplog, ["train", "-c", "tiny", "-o", f"data.train_list={listed}", "-o",
                              f"train.output_dir={other}", "--resume", str(checkpoint)])
    assert message == (f"--resume {checkpoint} continues the run in {checkpoint.parent}, but -o "
                       f"train.output_dir={other} names another folder: drop that override to continue the run "
                       "where it is")
    assert not other.exists()
