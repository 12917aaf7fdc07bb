"""Checkpoint files: a full load refuses another network, a pretrained init stays lenient, writes are atomic."""

import json
import re
from pathlib import Path

import numpy as np
import paddle
import pytest

from service.contract.manifest import Manifest
from training.checkpoint import build_model, load_weights, read_meta, save_checkpoint
from training.config import Config, load_config
from training.loop import train
from training.tsm import build_tsm
from training.workflows import evaluate_checkpoint, export_checkpoint


def _tiny(*extra: str) -> Config:
    return load_config("tiny", list(extra))


def _saved(tmp_path: Path, *extra: str) -> Path:
    """A checkpoint with its sidecar, of the tiny config with ``extra`` overrides."""
    cfg = _tiny(*extra)
    return save_checkpoint(tmp_path / "ckpt", build_model(cfg), cfg, 3, {"val_top1": 0.5})


def _bare(tmp_path: Path, model: paddle.nn.Layer, state: dict[str, object] | None = None) -> Path:
    """A state dict without a sidecar, as PaddleVideo writes them."""
    path = tmp_path / "foreign.pdparams"
    paddle.save(state if state is not None else model.state_dict(), str(path))
    return path


@pytest.mark.parametrize(("override", "field", "recorded", "current"), [
    ("model.num_classes=3", "num_classes", "3", "4"),
    ("model.depth=34", "depth", "34", "18"),
    ("model.base_width=16", "base_width", "16", "8"),
    ("model.shift=false", "shift", "False", "True"),
    ("model.num_seg=8", "num_seg", "8", "4"),
])
def test_a_checkpoint_of_another_network_is_refused_by_its_recorded_config(
        tmp_path: Path, override: str, field: str, recorded: str, current: str) -> None:
    params = _saved(tmp_path, override)
    model = build_model(_tiny())
    with pytest.raises(ValueError, match=rf"model\.{field}={recorded}.*model\.{field}={current}"):
        load_weights(model, params)


def test_the_layout_and_dropout_may_differ_from_the_recorded_config(tmp_path: Path) -> None:
    # NHWC is a memory layout and dropout acts in training only: the weights compute the same network.
    params = _saved(tmp_path, "model.data_format=NHWC", "model.drop_ratio=0.3")
    model = build_model(_tiny())
    loaded, missing = load_weights(model, params)
    assert loaded == len(model.state_dict()) and missing == []


def test_a_foreign_checkpoint_with_another_fc_is_refused_by_shape(tmp_path: Path) -> None:
    params = _bare(tmp_path, build_tsm(18, num_classes=3, num_seg=4, base_width=8))
    with pytest.raises(ValueError, match=r"head\.fc\.weight: file \[64, 3\], model \[64, 4\]"):
        load_weights(build_model(_tiny()), params)


def test_a_deeper_foreign_checkpoint_is_refused_rather_than_cut_down(tmp_path: Path) -> None:
    # Every key of ResNet-18 is in a ResNet-34 file: only the keys left over show it is another network.
    params = _bare(tmp_path, build_tsm(34, num_classes=4, num_seg=4, base_width=8))
    with pytest.raises(ValueError, match=r"unexpected in the file.*backbone\.res2c"):
        load_weights(build_model(_tiny()), params)


def test_a_foreign_checkpoint_missing_a_key_is_refused(tmp_path: Path) -> None:
    state = build_tsm(18, num_classes=4, num_seg=4, base_width=8).state_dict()
    del state["head.fc.bias"]
    with pytest.raises(ValueError, match=r"missing from the file.*head\.fc\.bias"):
        load_weights(build_model(_tiny()), _bare(tmp_path, build_model(_tiny()), state))


def test_a_matching_foreign_checkpoint_loads_every_tensor(tmp_path: Path) -> None:
    source = build_tsm(18, num_classes=4, num_seg=4, base_width=8)
    model = build_model(_tiny())
    loaded, missing = load_weights(model, _bare(tmp_path, source))
    assert loaded == len(model.state_dict()) and missing == []
    fc = "head.fc.weight"
    np.testing.assert_array_equal(model.state_dict()[fc].numpy(), source.state_dict()[fc].numpy())


def test_a_pretrained_backbone_init_still_takes_what_fits(tmp_path: Path) -> None:
    # PaddleVideo's load_ckpt: a 3-class (or deeper) file initialises the backbone of a 4-class network.
    source = build_tsm(18, num_classes=3, num_seg=8, base_width=8, shift=False)
    params = save_checkpoint(tmp_path / "other", source, _tiny("model.num_classes=3", "model.num_seg=8"), 1, {})
    model = build_model(_tiny())
    loaded, missing = load_weights(model, params, backbone_only=True)
    assert loaded == len([k for k in model.state_dict() if k.startswith("backbone.")]) and missing == []


def test_an_imagenet_style_file_without_the_backbone_prefix_initialises_every_backbone_tensor(
        tmp_path: Path) -> None:
    """ResNet50_pretrain.pdparams names its tensors ``conv1...``, not ``backbone.conv1...``."""
    source = build_tsm(18, num_classes=3, num_seg=4, base_width=8)
    bare = {k.removeprefix("backbone."): v for k, v in source.state_dict().items() if k.startswith("backbone.")}
    model = build_model(_tiny())
    loaded, missing = load_weights(model, _bare(tmp_path, source, bare), backbone_only=True)
    own = model.state_dict()
    assert loaded == len(bare) == len([k for k in own if k.startswith("backbone.")]) and missing == []
    for key, value in bare.items():
        np.testing.assert_array_equal(own[f"backbone.{key}"].numpy(), value.numpy())


def test_export_of_a_checkpoint_with_another_class_count_fails_before_publishing(tmp_path: Path) -> None:
    params = _saved(tmp_path, "model.num_classes=3")
    with pytest.raises(ValueError, match=r"model\.num_classes=3"):
        export_checkpoint(_tiny(), params, tmp_path / "repo", with_onnx=False)
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").rglob("*.pdiparams"))


def test_resume_from_another_model_config_is_refused(tmp_path: Path) -> None:
    params = _saved(tmp_path, "model.num_classes=3")
    cfg = _tiny(f"train.output_dir={tmp_path / 'run'}", "data.train_list=unused.list", "train.epochs=9")
    with pytest.raises(ValueError, match=r"model\.num_classes=3"):
        train(cfg, validate=False, resume=params)


def test_a_write_killed_midway_leaves_the_previous_checkpoint_intact(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _tiny()
    model = build_model(cfg)
    save_checkpoint(tmp_path / "latest", model, cfg, 1, {"val_top1": 0.25})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_save = paddle.save

    def dies_halfway(obj: object, path: str) -> None:
        Path(path).write_bytes(b"half a pickle")
        raise KeyboardInterrupt

    monkeypatch.setattr(paddle, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "latest", model, cfg, 2, {"val_top1": 0.5})
    monkeypatch.setattr(paddle, "save", real_save)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert read_meta(tmp_path / "latest.pdparams")["epoch"] == 1
    load_weights(build_model(cfg), tmp_path / "latest.pdparams")


def test_a_kill_while_saving_the_optimizer_keeps_the_previous_weights_too(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The three files are renamed only once all are written: new weights never sit beside an old epoch."""
    cfg = _tiny()
    model = build_model(cfg)
    optimizer = paddle.optimizer.Momentum(parameters=model.parameters())
    save_checkpoint(tmp_path / "latest", model, cfg, 1, {}, optimizer)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_save, calls = paddle.save, []

    def dies_on_the_optimizer(obj: object, path: str) -> None:
        calls.append(path)
        if path.endswith(".pdopt.tmp"):
            raise KeyboardInterrupt
        real_save(obj, path)

    monkeypatch.setattr(paddle, "save", dies_on_the_optimizer)
    for p in model.parameters():  # other weights than the saved ones
        p.set_value(p.numpy() + 1)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "latest", model, cfg, 2, {}, optimizer)
    assert len(calls) == 2 and {name: (tmp_path / name).read_bytes() for name in before} == before
    assert not list(tmp_path.glob("*.tmp"))  # the weights written before the kill went with it


def test_a_full_disk_while_saving_names_the_checkpoint_and_leaves_no_partial_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """740 KB of latest.*.tmp stayed behind, keeping the disk full, and the error named no file."""
    import errno

    cfg = _tiny()
    model = build_model(cfg)
    optimizer = paddle.optimizer.Momentum(parameters=model.parameters())
    save_checkpoint(tmp_path / "latest", model, cfg, 1, {}, optimizer)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_save = paddle.save

    def disk_full_on_the_optimizer(obj: object, path: str) -> None:
        if path.endswith(".pdopt.tmp"):
            Path(path).write_bytes(b"part of it")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, path)

    monkeypatch.setattr(paddle, "save", disk_full_on_the_optimizer)
    with pytest.raises(OSError, match=re.escape(f"could not save checkpoint {tmp_path / 'latest'} (No space left on "
                                                "device); the previous latest.pdparams is intact")):
        save_checkpoint(tmp_path / "latest", model, cfg, 2, {}, optimizer)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_failure_between_the_renames_leaves_no_temporary_file(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    cfg = _tiny()
    model = build_model(cfg)
    real, calls = os.replace, []

    def fails_second(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        real(src, dst)

    optimizer = paddle.optimizer.Momentum(parameters=model.parameters())
    monkeypatch.setattr(os, "replace", fails_second)
    with pytest.raises(OSError, match="Input/output error"):
        save_checkpoint(tmp_path / "latest", model, cfg, 1, {}, optimizer)
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "latest.json").exists()  # the sidecar goes last


def test_a_damaged_checkpoint_or_sidecar_is_named_not_a_pickle_or_json_error(tmp_path: Path) -> None:
    cfg = _tiny()
    params = _saved(tmp_path)
    params.write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(f"{params} is damaged (EOFError: Ran out of input); use another "
                                                   "checkpoint")):
        load_weights(build_model(cfg), params)
    params.with_suffix(".json").write_text('{"epoch": ')
    with pytest.raises(ValueError, match=re.escape(f"{params.with_suffix('.json')} is not a checkpoint's JSON "
                                                   "sidecar (Expecting value")):
        read_meta(params)


def test_a_finished_write_leaves_only_the_checkpoint_files(tmp_path: Path) -> None:
    cfg = _tiny()
    model = build_model(cfg)
    optimizer = paddle.optimizer.Momentum(parameters=model.parameters())
    for epoch in (1, 2):
        save_checkpoint(tmp_path / "latest", model, cfg, epoch, {}, optimizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "latest.pdopt", "latest.pdparams"]
    assert json.loads((tmp_path / "latest.json").read_text())["epoch"] == 2


def test_export_leaves_non_finite_metrics_out_of_a_manifest_the_service_reads(tmp_path: Path) -> None:
    cfg = _tiny()
    params = save_checkpoint(tmp_path / "ckpt", build_model(cfg), cfg, 2,
                             {"val_top1": 0.5, "val_loss": float("nan"), "train_loss": float("inf")})
    folder = export_checkpoint(cfg, params, tmp_path / "repo", with_onnx=False)
    manifest = Manifest.read(folder)  # what the service's repository does
    assert manifest.metrics == {"val_top1": 0.5}


@pytest.mark.parametrize("where", ["everywhere", "one weight"])
def test_export_refuses_a_diverged_checkpoint(tmp_path: Path, where: str) -> None:
    cfg = _tiny()
    model = build_model(cfg)
    fc = model.state_dict()["head.fc.weight"]
    values = np.full(fc.shape, np.nan, np.float32) if where == "everywhere" else fc.numpy().copy()
    values[0, 0] = np.nan
    fc.set_value(values)
    params = save_checkpoint(tmp_path / "ckpt", model, cfg, 2, {"val_top1": 0.25})
    with pytest.raises(ValueError, match=r"non-finite weights \(head\.fc\.weight\): the run diverged"):
        export_checkpoint(cfg, params, tmp_path / "repo", with_onnx=False)
    assert not any((tmp_path / "repo").rglob("manifest.json"))


@pytest.mark.parametrize(("override", "shown"), [("data.crop_size=24", r"data\.crop_size=24.*data\.crop_size=32"),
                                                 ("data.mean=[0.5,0.5,0.5]", r"data\.mean=\[0\.5, 0\.5, 0\.5\]")])
def test_export_and_evaluate_refuse_other_preprocessing_than_trained_with(tmp_path: Path, override: str,
                                                                          shown: str) -> None:
    params = _saved(tmp_path, override)
    with pytest.raises(ValueError, match=shown):
        export_checkpoint(_tiny(), params, tmp_path / "repo", with_onnx=False)
    with pytest.raises(ValueError, match=shown):
        evaluate_checkpoint(_tiny("data.valid_list=unused.list"), params)
    assert export_checkpoint(_tiny(override), params, tmp_path / "repo", with_onnx=False).is_dir()


def test_export_and_evaluate_refuse_other_class_names_than_trained_with(tmp_path: Path) -> None:
    """Two lists of the same length: without the names in the sidecar every class would publish misnamed."""
    trained, other = tmp_path / "trained.txt", tmp_path / "other.txt"
    classes = [f"action_{i}" for i in range(_tiny().model.num_classes)]
    trained.write_text("\n".join(classes) + "\n")
    other.write_text("\n".join([classes[0], "surprise", *classes[2:]]) + "\n")
    params = _saved(tmp_path, f"data.labels={trained}")
    shown = (f"was trained with other class names than {other} gives (class 1: 'action_1' against 'surprise'): "
             f"use the label list it was trained with, -o data.labels={trained}")
    with pytest.raises(ValueError, match=re.escape(shown)):
        export_checkpoint(_tiny(f"data.labels={other}"), params, tmp_path / "repo", with_onnx=False)
    with pytest.raises(ValueError, match=re.escape("than no data.labels (class_<i>) gives (class 0: 'action_0'")):
        evaluate_checkpoint(_tiny("data.valid_list=unused.list"), params)
    reordered = tmp_path / "reordered.txt"  # the same names in another order: every class would be misnamed
    reordered.write_text("\n".join([classes[1], classes[0], *classes[2:]]) + "\n")
    with pytest.raises(ValueError, match=re.escape("(class 0: 'action_0' against 'action_1')")):
        export_checkpoint(_tiny(f"data.labels={reordered}"), params, tmp_path / "repo", with_onnx=False)
    published = export_checkpoint(_tiny(f"data.labels={trained}"), params, tmp_path / "repo", with_onnx=False)
    assert (published / "labels.txt").read_text().splitlines() == classes


def test_a_folder_given_as_a_checkpoint_names_the_file_to_give(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"is a folder: give a checkpoint file, e\.g\. .*best\.pdparams"):
        load_weights(build_model(_tiny()), tmp_path)


def test_exporting_the_same_checkpoint_again_is_warned_about(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    params = _saved(tmp_path)
    export_checkpoint(_tiny(), params, tmp_path / "repo", with_onnx=False)
    assert "already published" not in caplog.text
    second = export_checkpoint(_tiny(), params, tmp_path / "repo", with_onnx=False)
    assert second.name == "2"
    assert f"{params} is already published as tiny version 1: this adds another version of the same weights" \
        in caplog.text
