"""Export into model_repo and import of PaddleVideo checkpoints/exports, checked through Paddle Inference."""

import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest

from service.contract.manifest import Manifest, ModelIO, Preprocessing, list_versions
from tests.oracles import paddle_logits
from training.export import export_to_repo
from training.importers import import_checkpoint, import_inference_model, infer_architecture
from training.tsm import build_tsm

SPEC = Preprocessing(num_seg=4, short_side=40, crop_size=32)


def _manifest(labels: int = 5, spec: Preprocessing = SPEC) -> Manifest:
    return Manifest(name="net", version=1, labels=[f"c{i}" for i in range(labels)], preprocessing=spec,
                    io=ModelIO(input_shape=(-1, spec.num_seg, 3, spec.crop_size, spec.crop_size)), depth=18,
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


def test_publish_numbers_versions_and_leaves_no_temporaries(tmp_path: Path) -> None:
    model = build_tsm(18, num_classes=5, num_seg=4, base_width=8)
    first = export_to_repo(model, tmp_path, _manifest())
    (tmp_path / "net" / "7").mkdir()  # a hand-made higher version: the next one goes above it
    shutil.copytree(first, tmp_path / "net" / "7", dirs_exist_ok=True)
    second = export_to_repo(model, tmp_path, _manifest())
    assert (first.name, second.name) == ("1", "8")
    assert Manifest.read(second).version == 8
    assert list_versions(tmp_path / "net") == [1, 7, 8]
    assert not [p for p in (tmp_path / "net").iterdir() if p.name.startswith(".")]
    assert sorted(p.name for p in second.iterdir()) == ["labels.txt", "manifest.json", "model.json",
                                                        "model.pdiparams"]


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
    assert [p.name for p in (tmp_path / "repo" / "pv").iterdir()] == ["1"]
