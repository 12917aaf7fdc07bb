"""Export into model_repo and import of PaddleVideo checkpoints/exports, checked through Paddle Inference."""

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import paddle
import pytest
from paddle.static import InputSpec

from service.contract.manifest import Manifest, ModelIO, Preprocessing, list_versions, scan_repository
from tests.oracles import paddle_logits
from training.export import export_to_repo, publish
from training.importers import (
    export_param_shapes,
    import_checkpoint,
    import_inference_model,
    infer_architecture,
)
from training.tsm import build_tsm

SPEC = Preprocessing(num_seg=4, short_side=40, crop_size=32)


def _manifest(labels: int = 5, spec: Preprocessing = SPEC) -> Manifest:
    return Manifest(name="net", version=1, labels=[f"c{i}" for i in range(labels)], preprocessing=spec,
                    io=ModelIO(input_shape=(-1, spec.frames_per_clip, 3, spec.crop_size, spec.crop_size)), depth=18,
                    base_width=8)


@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
def test_exported_model_equals_dygraph(tmp_path: Path, data_format: str) -> None:
    model = build_tsm(18, num_classes=5, num_seg=4, base_width=8, data_format=data_format)  # type: ignore[arg-type]
    folder = export_to_repo(model, tmp_path, _manifest())
    x = np.random.default_rng(0).standard_normal((3, 4, 3, 32, 32)).astype(np.float32)
    model.eval()
    expected = model(paddle.to_tensor(x)).numpy()
    for onednn in (False, True):
        np.testing.assert_allclose(paddle_logits(folder, x, onednn), expected, rtol=1e-4, atol=1e-5)


def test_a_three_crop_export_scores_the_mean_of_the_crops_logits(tmp_path: Path) -> None:
    """The exported graph takes [N, 3 * num_seg] frames (crop after crop) and averages the crops' logits."""
    model = build_tsm(18, num_classes=5, num_seg=4, base_width=8)
    three = SPEC.model_copy(update={"spatial_crops": 3})
    folder = export_to_repo(model, tmp_path, _manifest(spec=three))
    manifest = Manifest.read(folder)
    assert manifest.io.input_shape == (-1, 12, 3, 32, 32) and manifest.preprocessing.spatial_crops == 3
    crops = np.random.default_rng(1).standard_normal((3, 2, 4, 3, 32, 32)).astype(np.float32)  # [crop, N, T, ...]
    model.eval()
    each = np.stack([model(paddle.to_tensor(c)).numpy() for c in crops])
    clips = np.concatenate(list(crops), axis=1)  # [N, 3 * T, ...]
    np.testing.assert_allclose(paddle_logits(folder, clips), each.mean(axis=0), rtol=1e-4, atol=1e-5)


def test_publish_numbers_versions_and_leaves_no_temporaries(tmp_path: Path) -> None:
    model = build_tsm(18, num_classes=5, num_seg=4, base_width=8)
    first = export_to_repo(model, tmp_path, _manifest())
    (tmp_path / "net" / "7").mkdir()  # a hand-made higher version: the next one goes above it
    shutil.copytree(first, tmp_path / "net" / "7", dirs_exist_ok=True)
    second = export_to_repo(model, tmp_path, _manifest())
    assert (first.name, second.name) == ("1", "8")
    assert Manifest.read(second).version == 8
    assert list_versions(tmp_path / "net") == [1, 7, 8]
    assert [p.name for p in (tmp_path / "net").iterdir() if p.name.startswith(".")] == [".issued-versions"]
    assert sorted(p.name for p in second.iterdir()) == ["labels.txt", "manifest.json", "model.json",
                                                        "model.pdiparams"]
    assert Manifest.read(second).paddle_version == paddle.__version__  # which Paddle wrote the model file


def test_a_publish_whose_rename_fails_leaves_no_hidden_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the whole model under a dot name, for every failed publish (a read-only repository, a full disk)."""
    import errno

    import training.export

    def refused(*_: object) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    model = build_tsm(18, num_classes=5, num_seg=4, base_width=8)
    with monkeypatch.context() as patched:  # os.rename everywhere, for the publish's rename alone
        patched.setattr(training.export.os, "rename", refused)
        with pytest.raises(PermissionError):
            export_to_repo(model, tmp_path / "repo", _manifest())
    left = [p.name for p in (tmp_path / "repo" / "net").iterdir()]
    assert [name for name in left if name != ".issued-versions"] == [], left


def test_failed_export_publishes_nothing(tmp_path: Path) -> None:
    model = build_tsm(18, num_classes=5, num_seg=4, base_width=8)
    with pytest.raises(ValueError, match="outputs 5 classes but the manifest has 3"):
        export_to_repo(model, tmp_path, _manifest(labels=3))
    assert list((tmp_path / "net").iterdir()) == []


def test_infer_architecture_from_paddlevideo_keys() -> None:
    assert infer_architecture(build_tsm(50, num_classes=400).state_dict()) == (50, 400, 64)
    assert infer_architecture(build_tsm(101, num_classes=101).state_dict()) == (101, 101, 64)
    assert infer_architecture(build_tsm(18, num_classes=3, base_width=8).state_dict()) == (18, 3, 8)
    with pytest.raises(ValueError, match="not a TSM checkpoint"):
        infer_architecture({"fc.weight": np.zeros((2, 2))})


def test_import_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build_tsm(18, num_classes=5, num_seg=4, base_width=8)
    params = tmp_path / "TSM_tiny.pdparams"
    paddle.save(model.state_dict(), str(params))
    labels = ["a", "b", "c", "d", "e"]
    folder = import_checkpoint(params, labels, tmp_path / "repo", "imported", SPEC, dataset="test")
    manifest = Manifest.read(folder)
    assert manifest.labels == labels and manifest.source == "TSM_tiny.pdparams" and len(manifest.source_sha256) == 64
    x = np.random.default_rng(1).standard_normal((2, 4, 3, 32, 32)).astype(np.float32)
    model.eval()
    np.testing.assert_allclose(paddle_logits(folder, x, False), model(paddle.to_tensor(x)).numpy(),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="has 5 classes but the label list has 2"):
        import_checkpoint(params, ["a", "b"], tmp_path / "repo", "imported", SPEC)


def test_import_of_one_of_our_checkpoints_points_to_export(tmp_path: Path) -> None:
    from training.checkpoint import build_model, save_checkpoint
    from training.config import load_config

    cfg = load_config("tiny")
    params = save_checkpoint(tmp_path / "best", build_model(cfg), cfg, 1, {})
    with pytest.raises(ValueError, match=r"is a checkpoint of this project's training \(best\.json records its "
                                         r"config\): publish it with python -m training export"):
        import_checkpoint(params, [f"c{i}" for i in range(cfg.model.num_classes)], tmp_path / "repo", "x", SPEC)
    assert not (tmp_path / "repo").exists()


def test_import_inference_export(tmp_path: Path) -> None:
    model = build_tsm(18, num_classes=5, num_seg=4, base_width=8)
    exported = export_to_repo(model, tmp_path / "first", _manifest())
    pv = tmp_path / "pv"
    pv.mkdir()
    shutil.copyfile(exported / "model.json", pv / "TSM.json")  # PaddleVideo's export names
    shutil.copyfile(exported / "model.pdiparams", pv / "TSM.pdiparams")
    folder = import_inference_model(pv / "TSM.json", list("abcde"), tmp_path / "repo", "pv", SPEC)
    assert Manifest.read(folder).model_file == "model.json"
    x = np.random.default_rng(2).standard_normal((1, 4, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(paddle_logits(folder, x, False), paddle_logits(exported, x, False), rtol=1e-6)
    with pytest.raises(ValueError, match="outputs 5 classes but the label list has 4"):
        import_inference_model(pv / "TSM.json", list("abcd"), tmp_path / "repo", "pv", SPEC)
    eight = SPEC.model_copy(update={"num_seg": 8})  # the graph folds 8 frames into 2 rows of 4 segments
    with pytest.raises(ValueError, match=r"gave output shape \[2, 5\], not \[1, classes\]"):
        import_inference_model(pv / "TSM.json", list("abcde"), tmp_path / "repo", "pv", eight)
    assert sorted(p.name for p in (tmp_path / "repo" / "pv").iterdir()) == [".issued-versions", "1"]


def test_a_deleted_version_number_is_never_published_again(tmp_path: Path) -> None:
    # A service already serving 2 only loads versions above 2, and .cache/2 holds the old model's engines.
    model = build_tsm(18, num_classes=5, num_seg=4, base_width=8)
    export_to_repo(model, tmp_path, _manifest())
    second = export_to_repo(model, tmp_path, _manifest())
    shutil.rmtree(second)
    assert export_to_repo(model, tmp_path, _manifest()).name == "3"
    (tmp_path / "net" / ".cache" / "9" / "trt-fp16-b4-gpu0").mkdir(parents=True)  # a version deleted long ago
    assert export_to_repo(model, tmp_path, _manifest()).name == "10"
    assert list_versions(tmp_path / "net") == [1, 3, 10]
    assert scan_repository(tmp_path) == {"net": [1, 3, 10]}  # the bookkeeping is invisible to the service


def test_concurrent_publishers_never_share_a_version(tmp_path: Path) -> None:
    exported = export_to_repo(build_tsm(18, num_classes=5, num_seg=4, base_width=8), tmp_path / "src", _manifest())
    stages = [shutil.copytree(exported, tmp_path / f"stage-{i}") for i in range(8)]
    start = threading.Barrier(len(stages))

    def publish_one(staged: Path) -> Path:
        start.wait()
        return publish(tmp_path / "repo", staged, _manifest())

    with ThreadPoolExecutor(len(stages)) as pool:
        folders = list(pool.map(publish_one, stages))
    assert sorted(int(f.name) for f in folders) == list(range(1, 9))
    assert all(Manifest.read(f).version == int(f.name) for f in folders)


def test_invalid_names_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    model = build_tsm(18, num_classes=5, num_seg=4, base_width=8)
    params = tmp_path / "src" / "TSM.pdparams"
    params.parent.mkdir()
    paddle.save(model.state_dict(), str(params))
    exported = export_to_repo(model, tmp_path / "src", _manifest())
    repo = tmp_path / "box" / "repo"
    with pytest.raises(ValueError, match=r"invalid model name '\.\./escaped'"):
        export_to_repo(model, repo, _manifest().model_copy(update={"name": "../escaped"}))
    assert not (tmp_path / "box").exists()
    with pytest.raises(ValueError, match="invalid model name"):
        import_inference_model(exported / "model.json", list("abcde"), repo, "../escaped", SPEC)
    assert not (tmp_path / "box").exists()
    with pytest.raises(ValueError, match="invalid model name"):
        import_checkpoint(params, list("abcde"), repo, "../escaped", SPEC)


def test_import_tsn_checkpoint_keeps_the_shift_off(tmp_path: Path) -> None:
    # The same keys and shapes as TSM: served with the shift on, the predictions would be wrong.
    tsn = build_tsm(18, num_classes=5, num_seg=4, shift=False, base_width=8)
    params = tmp_path / "TSN_tiny.pdparams"
    paddle.save(tsn.state_dict(), str(params))
    folder = import_checkpoint(params, list("abcde"), tmp_path / "repo", "tsn", SPEC, shift=False)
    manifest = Manifest.read(folder)
    assert (manifest.shift, manifest.backbone, manifest.depth, manifest.base_width) == (False, "ResNetTSN-18", 18, 8)
    x = np.random.default_rng(3).standard_normal((2, 4, 3, 32, 32)).astype(np.float32)
    tsn.eval()
    np.testing.assert_allclose(paddle_logits(folder, x), tsn(paddle.to_tensor(x)).numpy(), rtol=1e-4, atol=1e-5)


def test_import_export_records_the_architecture_its_tensors_show(tmp_path: Path) -> None:
    model = build_tsm(18, num_classes=5, num_seg=4, base_width=8, shift_impl="fused")  # PaddleVideo's shift op
    exported = export_to_repo(model, tmp_path / "first", _manifest())
    expected = sorted(tuple(v.shape) for v in model.state_dict().values())
    assert sorted(export_param_shapes(exported / "model.json")) == expected  # the file orders tensors its own way
    manifest = Manifest.read(import_inference_model(exported / "model.json", list("abcde"), tmp_path / "repo", "pv",
                                                    SPEC))
    assert (manifest.backbone, manifest.depth, manifest.base_width, manifest.shift) == ("ResNetTSM-18", 18, 8, True)
    with pytest.raises(ValueError, match="calls temporal_shift: it is a TSM export"):
        import_inference_model(exported / "model.json", list("abcde"), tmp_path / "repo", "pv", SPEC, shift=False)


def test_import_export_of_an_unknown_network_says_so(tmp_path: Path) -> None:
    model = paddle.nn.Sequential(paddle.nn.Flatten(), paddle.nn.Linear(4 * 3 * 32 * 32, 5))
    model.eval()
    paddle.jit.save(paddle.jit.to_static(model, input_spec=[InputSpec([None, 4, 3, 32, 32], "float32")],
                                         full_graph=True), str(tmp_path / "pv" / "Other"))
    manifest = Manifest.read(import_inference_model(tmp_path / "pv" / "Other.json", list("abcde"), tmp_path / "repo",
                                                    "other", SPEC))
    assert (manifest.backbone, manifest.depth, manifest.base_width) == ("unknown", 0, 0)


def _save_linear(folder: Path, name: str, bias: list[float], softmax: bool = False) -> Path:
    """An export of a linear model over the clip (bias ``bias``), ending in a softmax or not."""
    linear = paddle.nn.Linear(4 * 3 * 32 * 32, len(bias))
    linear.bias.set_value(paddle.to_tensor(bias, dtype="float32"))
    model = paddle.nn.Sequential(paddle.nn.Flatten(), linear, *([paddle.nn.Softmax()] if softmax else []))
    model.eval()
    paddle.jit.save(paddle.jit.to_static(model, input_spec=[InputSpec([None, 4, 3, 32, 32], "float32")],
                                         full_graph=True), str(folder / name))
    return folder / f"{name}.json"


def test_import_of_an_export_that_ends_in_a_softmax_is_refused(tmp_path: Path) -> None:
    """The service takes the softmax of the model's output: of probabilities, every score would come out ~1/K.
    Logits that look like probabilities for one clip (a bias that sums to 1, a zero clip) are still logits."""
    probs = _save_linear(tmp_path / "pv", "Probs", [0.0] * 5, softmax=True)
    with pytest.raises(ValueError, match=r"already probabilities .* export it without the softmax"):
        import_inference_model(probs, list("abcde"), tmp_path / "repo", "probs", SPEC)
    assert not (tmp_path / "repo" / "probs" / "1").exists()
    logits = _save_linear(tmp_path / "pv", "Logits", [0.1, 0.2, 0.2, 0.2, 0.3])
    assert import_inference_model(logits, list("abcde"), tmp_path / "repo", "logits", SPEC).name == "1"
    broken = _save_linear(tmp_path / "pv", "Broken", [float("nan")] * 5)
    with pytest.raises(ValueError, match="not finite"):
        import_inference_model(broken, list("abcde"), tmp_path / "repo", "broken", SPEC)
