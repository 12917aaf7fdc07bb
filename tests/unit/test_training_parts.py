"""Config loading, the train-time crop, the optimiser recipe and the AMP plan."""

import logging
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image
from pydantic import ValidationError

from training.checkpoint import build_model
from training.config import CONFIG_DIR, load_config
from training.optim import amp_plan, make_optimizer
from training.transforms import crop_offsets, crop_size_pairs, multi_scale_crop, random_flip


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.preprocessing().num_seg == cfg.model.num_seg


def test_k400_config_is_the_seed_recipe() -> None:
    cfg = load_config("tsm_k400_frames")
    assert (cfg.model.depth, cfg.model.num_classes, cfg.model.num_seg) == (50, 400, 8)
    assert cfg.optimizer.boundaries == [20, 40] and cfg.optimizer.values == [0.02, 0.002, 0.0002]
    assert (cfg.optimizer.momentum, cfg.optimizer.weight_decay, cfg.optimizer.clip_norm) == (0.9, 1e-4, 20.0)
    assert (cfg.data.short_side, cfg.data.crop_size, cfg.data.batch_size, cfg.train.epochs) == (256, 224, 16, 50)


def test_overrides_parse_yaml_values_and_validate() -> None:
    cfg = load_config("tiny", ["train.epochs=3", "optimizer.values=[0.1, 0.01]", "model.data_format=NHWC"])
    assert cfg.train.epochs == 3 and cfg.optimizer.values == [0.1, 0.01] and cfg.model.data_format == "NHWC"
    with pytest.raises(ValidationError):
        load_config("tiny", ["model.depth=42"])
    with pytest.raises(ValidationError, match="one more entry"):
        load_config("tiny", ["optimizer.values=[0.1]"])
    with pytest.raises(ValidationError):
        load_config("tiny", ["model.no_such_key=1"])
    with pytest.raises(ValueError, match=r"key\.path=value"):
        load_config("tiny", ["epochs"])


def test_multiscale_crop_sizes_and_13_offsets() -> None:
    # 340x256: base 256 -> [256, 224, 192, 168]; 224 stays 224; pairs with |i-j| <= 1
    pairs = crop_size_pairs(340, 256, 224)
    assert (256, 256) in pairs and (224, 256) in pairs and (168, 192) in pairs
    assert (256, 192) not in pairs and len(pairs) == 10
    # snapping: int(254*0.875) = 222 is within 3 px of 224
    assert crop_size_pairs(254, 254, 224)[0:2] == [(254, 254), (224, 254)]
    offsets = crop_offsets(340, 256, 224, 224)
    assert len(offsets) == 13
    assert offsets[:5] == [(0, 0), (116, 0), (0, 32), (116, 32), (58, 16)]
    assert (29, 8) in offsets and (87, 24) in offsets


def test_multiscale_crop_is_one_crop_per_clip() -> None:
    frames = [Image.fromarray(np.full((120, 160, 3), i * 20, np.uint8)) for i in range(4)]
    frames[0].putpixel((0, 0), (255, 0, 0))
    out = multi_scale_crop(frames, 64, np.random.default_rng(3))
    assert all(f.size == (64, 64) for f in out)
    # uniform frames stay uniform and keep their own value: each frame got the same crop, no mixing
    assert [int(np.asarray(f)[32, 32, 0]) for f in out[1:]] == [20, 40, 60]


def test_flip_is_all_or_nothing() -> None:
    frames = [Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)) for _ in range(3)]
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(20):
        out = random_flip(frames, rng, 0.5)
        flipped = [np.asarray(f)[0, 0] == 3 for f in out]
        assert len(set(flipped)) == 1
        outcomes.add(flipped[0])
    assert outcomes == {True, False}
    assert random_flip(frames, rng, 0.0) is frames


def test_optimizer_follows_paddlevideo_param_attrs() -> None:
    cfg = load_config("tiny")
    model = build_model(cfg)
    optimizer, schedule = make_optimizer(cfg, model)
    assert model.head.fc.weight.optimize_attr["learning_rate"] == 5.0
    assert model.head.fc.bias.optimize_attr["learning_rate"] == 10.0
    assert model.head.fc.bias.regularizer._coeff == 0.0
    assert model.backbone.conv._batch_norm.weight.regularizer._coeff == 0.0
    assert model.backbone.conv._conv.weight.regularizer is None  # takes the global L2
    assert optimizer._grad_clip.clip_norm == cfg.optimizer.clip_norm
    assert schedule() == 0.05
    for _ in range(100):
        schedule.step()
    assert schedule() == 0.005


def test_weight_decay_reaches_the_conv_and_fc_weights_only() -> None:
    """One step with zero gradients moves a parameter only by its L2 decay: PaddleVideo decays every weight but
    the BatchNorm scales and shifts and the fc bias (whose values are set to 1 here, so that decay would show)."""
    cfg = load_config("tiny")
    model = build_model(cfg)
    optimizer, _ = make_optimizer(cfg, model)
    bn = model.backbone.conv._batch_norm
    watched = {"conv weight": model.backbone.conv._conv.weight, "fc weight": model.head.fc.weight,
               "bn scale": bn.weight, "bn shift": bn.bias, "fc bias": model.head.fc.bias}
    for name in ("bn shift", "fc bias"):
        watched[name].set_value(np.ones(watched[name].shape, np.float32))
    before = {name: p.numpy().copy() for name, p in watched.items()}
    crop = cfg.data.crop_size
    (model(paddle.zeros([1, cfg.model.num_seg, 3, crop, crop])).sum() * 0).backward()
    optimizer.step()
    moved = {name: not np.array_equal(before[name], p.numpy()) for name, p in watched.items()}
    assert moved == {"conv weight": True, "fc weight": True, "bn scale": False, "bn shift": False, "fc bias": False}
    weight = before["conv weight"]
    shrunk = weight - watched["conv weight"].numpy()  # lr * decay * w, to float32 rounding of w
    np.testing.assert_allclose(shrunk, cfg.optimizer.values[0] * cfg.optimizer.weight_decay * weight, rtol=0,
                               atol=float(np.spacing(np.abs(weight).max())))


def test_adam_takes_the_recipe_and_moves_the_backbone_where_momentum_stalls() -> None:
    """From scratch the fc's Normal(0, 0.001) init scales every backbone gradient down: Momentum's first step
    barely moves the backbone, Adam's step size does not depend on the gradient's scale (~90x here)."""
    x = paddle.to_tensor(np.random.default_rng(0).normal(size=(2, 2, 3, 32, 32)).astype("float32"))
    label = paddle.to_tensor([[0], [1]])
    changes = {}
    for name, kind in (("momentum", paddle.optimizer.Momentum), ("adam", paddle.optimizer.Adam)):
        cfg = load_config("tiny", [f"optimizer.name={name}", "optimizer.values=[0.001, 0.0001]",
                                   "model.num_seg=2", "model.drop_ratio=0"])
        paddle.seed(0)
        model = build_model(cfg)
        optimizer, schedule = make_optimizer(cfg, model)
        assert isinstance(optimizer, kind)
        assert optimizer._grad_clip.clip_norm == cfg.optimizer.clip_norm and schedule() == 0.001
        before = model.backbone.conv._conv.weight.numpy().copy()
        paddle.nn.functional.cross_entropy(model(x), label).backward()
        optimizer.step()
        changes[name] = float(np.abs(model.backbone.conv._conv.weight.numpy() - before).mean())
    assert changes["adam"] > 20 * changes["momentum"], changes


def test_amp_plan(caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config("tiny", ["train.amp=true", "train.amp_level=O2"])
    with caplog.at_level(logging.WARNING):
        assert not amp_plan(cfg, has_gpu=False).enabled
    assert "needs a CUDA GPU" in caplog.text
    plan = amp_plan(cfg, has_gpu=True)
    assert plan.enabled and plan.level == "O2"
    assert (plan.init_loss_scaling, plan.incr_every_n_steps, plan.decr_every_n_nan_or_inf) == (65536.0, 2000, 1)
    assert set(plan.custom_black_list) == {"reduce_mean", "conv3d"}
    assert not amp_plan(load_config("tiny"), has_gpu=True).enabled


def test_label_aware_flip_and_time_reversal() -> None:
    from training.transforms import flip_with_label, reverse_with_label

    frames = [Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)) for _ in range(2)]
    flipped, label = flip_with_label(frames, 0, np.random.default_rng(0), 1.0, [1, 0])
    assert label == 1 and np.asarray(flipped[0])[0, 0] == 3
    assert flip_with_label(frames, 0, np.random.default_rng(0), 1.0, [])[1] == 0  # PaddleVideo: labels kept
    clip = np.arange(4)[:, None] * np.ones((4, 2))
    reversed_clip, label = reverse_with_label(clip, 2, np.random.default_rng(0), 1.0, [1, 0, 3, 2])
    assert label == 3 and reversed_clip[:, 0].tolist() == [3, 2, 1, 0]
    same, label = reverse_with_label(clip, 2, np.random.default_rng(0), 0.0, [1, 0, 3, 2])
    assert label == 2 and same is clip


def test_label_maps_must_be_permutations() -> None:
    with pytest.raises(ValidationError, match="permutation"):
        load_config("tiny", ["data.reverse_labels=[0, 0, 1, 2]", "data.reverse_prob=0.5"])
    with pytest.raises(ValidationError, match=r"needs data\.reverse_labels"):
        load_config("tiny", ["data.reverse_prob=0.5"])
    assert load_config("demo").data.reverse_labels == [1, 0, 3, 2, 5, 4, 7, 6]


def test_default_procs_is_a_process_a_core_up_to_the_limit_and_one_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from training.parallel import default_procs

    monkeypatch.setattr(paddle.device, "is_compiled_with_cuda", lambda: False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0})
    assert default_procs() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(16)))
    assert default_procs() == 2 and default_procs(limit=8) == 8
    monkeypatch.setattr(paddle.device, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: 1)
    assert default_procs() == 1


def test_the_demo_refuses_a_process_count_that_does_not_divide_its_batch(tmp_path: Path) -> None:
    from training.demo import run_demo

    with pytest.raises(ValueError, match="must divide the global batch of 16"):
        run_demo(tmp_path / "repo", tmp_path / "work", procs=3)
    assert not (tmp_path / "work").exists()  # refused before any work


@pytest.mark.parametrize(("size", "shuffle", "batches"), [(10, True, [4, 4]), (10, False, [4, 4, 2]), (3, True, [3])])
def test_training_loader_drops_a_partial_last_batch_unless_that_leaves_none(size: int, shuffle: bool,
                                                                            batches: list[int]) -> None:
    from training.data import make_loader

    class Numbers(paddle.io.Dataset):
        def __len__(self) -> int:
            return size

        def __getitem__(self, i: int) -> int:
            return i

    loader = make_loader(Numbers(), 4, 0, shuffle)
    assert [len(b) for b in loader.batch_sampler] == batches


def test_the_best_checkpoint_is_the_higher_top1_then_the_lower_loss() -> None:
    from training.loop import improves_on

    best = {"val_top1": 0.9, "val_loss": 0.5}
    assert improves_on({"val_top1": 0.91, "val_loss": 2.0}, best)  # top-1 first, whatever the loss
    assert not improves_on({"val_top1": 0.89, "val_loss": 0.1}, best)
    assert improves_on({"val_top1": 0.9, "val_loss": 0.4}, best)  # a tie goes to the surer epoch
    assert not improves_on({"val_top1": 0.9, "val_loss": 0.6}, best)  # the later, less sure one does not replace it
    assert not improves_on({"val_top1": 0.9, "val_loss": 0.5}, best)  # equal in both: the first is kept
    assert not improves_on({"val_top1": 0.9, "val_loss": float("nan")}, best)
    assert improves_on({"val_top1": 0.9, "val_loss": 3.0}, {"val_top1": 0.9, "val_loss": None})  # null in JSON
    assert improves_on({"val_top1": 0.0, "val_loss": 9.0}, {})  # the first validated epoch
    assert not improves_on({"loss": 0.1}, {})  # no validation, no best checkpoint


def test_a_missing_pretrained_file_names_the_setting_and_where_to_download_it(tmp_path: Path) -> None:
    from training.checkpoint import load_weights

    missing = tmp_path / "ResNet50_pretrain.pdparams"
    with pytest.raises(FileNotFoundError) as refused:
        load_weights(build_model(load_config("tiny")), missing, backbone_only=True)
    assert str(refused.value) == (f"model.pretrained {missing} does not exist: download it as README.md, Training, "
                                  "'Kinetics-400 / UCF-101 with the seed's recipes' says, or train from scratch "
                                  "with -o model.pretrained=")


def test_train_refuses_a_missing_pretrained_file_in_one_sentence(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    from training.cli import main

    code = main(["train", "-c", "tiny", "-o", f"model.pretrained={tmp_path / 'nope.pdparams'}",
                 "-o", "data.train_list=unused.list", "-o", f"train.output_dir={tmp_path / 'run'}"])
    assert code == 2
    assert f"model.pretrained {tmp_path / 'nope.pdparams'} does not exist" in caplog.text
    assert "to load model not exists" not in caplog.text


@pytest.mark.parametrize("job", ["evaluate", "export", "load"])
def test_evaluate_and_export_name_a_missing_checkpoint_alike(tmp_path: Path, job: str) -> None:
    from training.checkpoint import load_weights
    from training.workflows import evaluate_checkpoint, export_checkpoint

    cfg, missing = load_config("tiny", ["data.valid_list=unused.list"]), tmp_path / "best.pdparams"
    run = {"evaluate": lambda: evaluate_checkpoint(cfg, missing, out_dir=tmp_path),
           "export": lambda: export_checkpoint(cfg, missing, tmp_path / "repo", with_onnx=False),
           "load": lambda: load_weights(build_model(cfg), missing)}[job]
    with pytest.raises(FileNotFoundError, match=rf"^checkpoint {missing} does not exist: give the \.pdparams file "
                                                r"of a run \(its train\.output_dir holds best\.pdparams"):
        run()
    assert not (tmp_path / "repo").exists()


def test_an_interrupt_just_after_a_save_names_the_saved_checkpoint(tmp_path: Path) -> None:
    """The signal can land between a checkpoint's save and the loop's note of it (a fresh clone's run said
    "nothing was saved" beside a latest.json): what the run's own latest .json records counts too."""
    from training.interrupts import Progress, Terminated

    latest = tmp_path / "latest.pdparams"
    progress = Progress(None, 0, latest)
    assert progress.interrupted(KeyboardInterrupt()).saved is None  # nothing on disk yet
    latest.with_suffix(".json").write_text('{"epoch": 3}')
    stop = progress.interrupted(Terminated())
    assert (stop.epoch, stop.saved, stop.saved_epoch, stop.signum) == (4, latest, 3, 15)
    progress.saved, progress.saved_epoch = tmp_path / "resumed.pdparams", 5  # an older latest never wins
    assert progress.interrupted(KeyboardInterrupt()).saved_epoch == 5
    latest.with_suffix(".json").write_text("not json")
    assert Progress(None, 0, latest).interrupted(KeyboardInterrupt()).saved is None
