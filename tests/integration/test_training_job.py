"""The training job end to end on real MP4s: loss falls, checkpoints, validation, skipped clips, plots, evaluation."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.integration.tiny_training import PNG_MAGIC, overrides, records, step_losses, tiny_config
from training.checkpoint import read_meta
from training.loop import train
from training.workflows import evaluate_checkpoint, export_checkpoint


def test_two_steps_on_one_batch_lower_the_loss(tiny_set: Path, tmp_path: Path) -> None:
    # One batch of 4 clips seen twice: the second step must see a lower loss than the first.
    cfg = tiny_config(tiny_set, tmp_path, "train.epochs=2", "train.max_steps_per_epoch=1", "data.batch_size=12",
               "optimizer.values=[0.01, 0.01]")
    train(cfg, validate=False)
    first, second = step_losses(tmp_path)
    assert second < first


def test_validation_checkpoints_and_pictures(tiny_set: Path, tmp_path: Path) -> None:
    result = train(tiny_config(tiny_set, tmp_path, "train.epochs=2"), validate=True)
    assert result.best_checkpoint == tmp_path / "best.pdparams"
    assert {p.name for p in tmp_path.iterdir()} >= {"best.pdparams", "best.json", "latest.pdparams", "latest.pdopt",
                                                     "metrics.jsonl", "curves.png", "config.json"}
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC
    epochs = [r for r in result.history]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(r["val_count"] == 6 for r in epochs)  # the missing file is skipped, not replaced
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["metrics"]["val_top1"] == max(r["val_top1"] for r in epochs)
    assert best["config"]["model"]["depth"] == 18


def test_the_same_seed_gives_the_same_run(tiny_set: Path, tmp_path: Path) -> None:
    # Shuffled batches of 4 over 12 clips, two epochs: the order, the augmentation and so the losses repeat.
    runs = [tiny_config(tiny_set, tmp_path / name, "train.epochs=2", "data.batch_size=4") for name in ("a", "b")]
    for cfg in runs:
        train(cfg, validate=False)
    first, second = (step_losses(tmp_path / name) for name in ("a", "b"))
    assert len(first) == 6 and first == second
    other = train(tiny_config(tiny_set, tmp_path / "c", "train.epochs=2", "data.batch_size=4", "train.seed=1"), False)
    assert other.history[0]["train_loss"] != pytest.approx(np.mean(first[:3]), abs=1e-7)


def test_training_runs_the_fused_shift_and_trains_the_weights_the_slices_train(
        tiny_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused op is only faster: two epochs with dropout on, batches shuffled, end on the same bytes."""
    import paddle

    import training.loop

    fused_calls = []
    op = paddle.nn.functional.temporal_shift
    monkeypatch.setattr(paddle.nn.functional, "temporal_shift", lambda *a, **k: fused_calls.append(1) or op(*a, **k))
    keys = ("train.epochs=2", "data.batch_size=4", "model.drop_ratio=0.5")
    train(tiny_config(tiny_set, tmp_path / "fused", *keys), validate=False)
    assert len(fused_calls) == 6 * 8  # 3 steps an epoch, 8 blocks: every block's shift is the fused op
    monkeypatch.setattr(training.loop, "training_shift", lambda num_seg: "slice")
    train(tiny_config(tiny_set, tmp_path / "slice", *keys), validate=False)
    assert len(fused_calls) == 6 * 8
    fused, sliced = (paddle.load(str(tmp_path / run / "latest.pdparams")) for run in ("fused", "slice"))
    assert fused.keys() == sliced.keys()
    assert all(np.array_equal(fused[k].numpy(), sliced[k].numpy()) for k in fused)
    assert step_losses(tmp_path / "fused") == step_losses(tmp_path / "slice")


def test_two_segments_train_with_the_slices(tiny_set: Path, tmp_path: Path) -> None:
    # Paddle's fused op refuses a shift ratio of 1/2: such a run must train with the slices instead of failing.
    result = train(tiny_config(tiny_set, tmp_path, "model.num_seg=2", "train.max_steps_per_epoch=1"), validate=False)
    assert result.latest_checkpoint.exists()


def test_a_reached_validation_target_ends_the_run_early(tiny_set: Path, tmp_path: Path) -> None:
    frozen = ["train.max_steps_per_epoch=1", "optimizer.values=[0.0, 0.0]"]  # lr 0: every epoch scores the same
    full = train(tiny_config(tiny_set, tmp_path / "a", "train.epochs=2", "train.stop_at_val_top1=1.0", *frozen), True)
    assert [r["epoch"] for r in full.history] == [1, 2]  # below the target: every epoch runs
    score = full.history[0]["val_top1"]
    assert 0 < score < 1 and full.history[1]["val_top1"] == score
    stop = f"train.stop_at_val_top1={score}"
    early = train(tiny_config(tiny_set, tmp_path / "b", "train.epochs=3", stop, *frozen), True)
    assert [r["epoch"] for r in early.history] == [1]


def test_resume_continues_at_the_next_epoch(tiny_set: Path, tmp_path: Path) -> None:
    train(tiny_config(tiny_set, tmp_path, "train.epochs=1", "optimizer.boundaries=[1]"), validate=False)
    result = train(tiny_config(tiny_set, tmp_path, "train.epochs=2", "optimizer.boundaries=[1]"), validate=False,
                   resume=tmp_path / "latest.pdparams")
    assert [r["epoch"] for r in result.history] == [2]
    assert result.history[0]["lr"] == pytest.approx(0.005)  # the schedule resumed past its boundary
    assert json.loads((tmp_path / "latest.json").read_text())["epoch"] == 2


def test_a_resumed_schedule_steps_down_on_time_and_every_nth_epoch_is_kept(tiny_set: Path, tmp_path: Path) -> None:
    """From latest (with the optimiser's state) and from a weights-only epoch_N alike, the step-down comes at its
    boundary; epoch_N every save_interval epochs; the epoch's train_loss is the mean of its steps' losses."""
    extra = ("optimizer.boundaries=[2]", "train.save_interval=2")
    train(tiny_config(tiny_set, tmp_path, "train.epochs=1", *extra), validate=False)
    train(tiny_config(tiny_set, tmp_path, "train.epochs=3", *extra), validate=False,
          resume=tmp_path / "latest.pdparams")
    logged = records(tmp_path / "metrics.jsonl")
    epochs = [r for r in logged if r["kind"] == "epoch"]
    assert [r["lr"] for r in epochs] == pytest.approx([0.05, 0.05, 0.005])
    for record in epochs:
        losses = [float(r["loss"]) for r in logged if r["kind"] == "step" and r["epoch"] == record["epoch"]]
        assert len(losses) == 3 and record["train_loss"] == pytest.approx(np.mean(losses))
    assert sorted(p.name for p in tmp_path.glob("epoch_*")) == ["epoch_2.json", "epoch_2.pdparams"]
    assert not list(tmp_path.glob(".write-test-*"))  # the writability probe is gone
    weights_only = train(tiny_config(tiny_set, tmp_path, "train.epochs=3", *extra), validate=False,
                         resume=tmp_path / "epoch_2.pdparams")
    assert [r["lr"] for r in weights_only.history] == pytest.approx([0.005])


def test_gradients_do_not_add_up_from_step_to_step(tmp_path: Path) -> None:
    """The same batch twice at learning rate 0 (the weights stay put): both steps see the same gradient."""
    import paddle

    from training.checkpoint import build_model
    from training.config import load_config
    from training.epoch import train_epoch
    from training.optim import amp_plan, make_optimizer

    cfg = load_config("tiny", ["optimizer.values=[0.0, 0.0]"])
    model = build_model(cfg)
    optimizer, _ = make_optimizer(cfg, model)
    crop = cfg.data.crop_size
    clips = np.random.default_rng(0).standard_normal((2, cfg.model.num_seg, 3, crop, crop)).astype(np.float32)
    batch = {"clips": paddle.to_tensor(clips), "labels": paddle.to_tensor([[0], [1]]), "skipped": []}
    grads: list[np.ndarray] = []
    step = optimizer.step

    def recording() -> None:
        grads.append(model.head.fc.weight.grad.numpy().copy())
        step()

    optimizer.step = recording  # type: ignore[method-assign]
    train_epoch(model, [batch, batch], optimizer, amp_plan(cfg), None, cfg, 0, tmp_path / "log.jsonl")  # type: ignore[arg-type]
    assert len(grads) == 2 and np.abs(grads[0]).max() > 0
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-5, atol=1e-8)


def test_training_clips_sample_other_frames_each_epoch_and_the_same_again(tiny_set: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A random offset per segment, drawn anew each epoch (else every epoch sees the same frames), reproducibly."""
    import training.data
    from training.data import ClipDataset

    drawn: list[list[int]] = []
    real = training.data.train_indices

    def recording(*args: object) -> list[int]:
        drawn.append(list(real(*args)))  # type: ignore[arg-type]
        return drawn[-1]

    monkeypatch.setattr(training.data, "train_indices", recording)
    dataset = ClipDataset(tiny_config(tiny_set, tmp_path), str(tiny_set / "train.list"), train=True)
    by_epoch = []
    for epoch in (0, 1, 0):
        dataset.epoch = epoch
        drawn.clear()
        for i in range(len(dataset)):
            assert dataset[i][0] is not None
        by_epoch.append(list(drawn))
    assert by_epoch[0] == by_epoch[2] and by_epoch[0] != by_epoch[1]


def test_undecodable_clip_is_reported_by_path_and_skipped(tiny_set: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_set, tmp_path, "train.epochs=1")
    train(cfg, validate=False)
    result = evaluate_checkpoint(cfg, tmp_path / "latest.pdparams", str(tiny_set / "with_bad.list"), tmp_path)
    assert result.count == 2
    assert len(result.skipped) == 1 and result.skipped[0].startswith(str(tiny_set / "bad.mp4") + ": ")
    assert result.skipped[0].count("bad.mp4") == 1, result.skipped  # named once, then why
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == PNG_MAGIC
    assert result.confusion.sum() == 2


def test_a_run_or_evaluation_that_reads_no_clip_fails_naming_the_settings(tiny_set: Path, tmp_path: Path) -> None:
    """Every clip skipped (a wrong data_prefix) would otherwise 'succeed': NaN loss, random weights, top-1 0. Files
    that are not there are found before the first epoch; files that are there but unreadable by the epoch, whose
    training is then kept (a whole epoch, on Kinetics, was lost)."""
    wrong = tiny_config(tiny_set, tmp_path / "run", f"data.data_prefix={tmp_path / 'nowhere'}")
    with pytest.raises(ValueError, match=r"none of 8 clips of .*train\.list spread through it exists \(e\.g\. "
                                         r".*nowhere/clip_0\.mp4\): check data\.data_prefix"):
        train(wrong, validate=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before any epoch
    unreadable = tmp_path / "unreadable.list"
    unreadable.write_text("bad.mp4 0\nbad.mp4 1\n")
    with pytest.raises(ValueError, match=r"epoch 1: no clip of .*unreadable\.list could be read \(\d+ skipped\): "
                                         r"check data\.data_prefix"):
        train(tiny_config(tiny_set, tmp_path / "run", f"data.train_list={unreadable}"), validate=False)
    assert not (tmp_path / "run" / "latest.pdparams").exists()
    train(tiny_config(tiny_set, tmp_path / "run", "train.epochs=1"), validate=False)
    with pytest.raises(ValueError, match=r"no clip of .*val\.list could be read \(\d+ skipped\)"):
        evaluate_checkpoint(wrong, tmp_path / "run" / "latest.pdparams")
    (tmp_path / "only_bad.list").write_text("bad.mp4 0\n")
    wrong_val = tiny_config(tiny_set, tmp_path / "v", f"data.valid_list={tmp_path / 'only_bad.list'}")
    kept = tmp_path / "v" / "latest.pdparams"
    with pytest.raises(ValueError, match=rf"no clip of .*only_bad\.list could be read: .*; epoch 1's training is "
                                         rf"saved in {kept}: resume with --resume {kept}"):
        train(wrong_val, validate=True)
    assert read_meta(kept)["epoch"] == 1
    assert "val_top1" not in read_meta(kept)["metrics"]  # a 0 would have read as a measured validation


def test_train_refuses_at_once_what_would_fail_or_do_nothing_later(tiny_set: Path, tmp_path: Path) -> None:
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match=r"three\.txt has 3 labels, model\.num_classes is 4"):
        train(tiny_config(tiny_set, tmp_path / "run", f"data.labels={tmp_path / 'three.txt'}"), validate=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    train(tiny_config(tiny_set, tmp_path / "run", "train.epochs=1"), validate=False)
    with pytest.raises(ValueError, match=r"already at epoch 1 and train\.epochs is 1: nothing to train"):
        train(tiny_config(tiny_set, tmp_path / "run", "train.epochs=1"), validate=False,
              resume=tmp_path / "run" / "latest.pdparams")
    with pytest.raises(ValueError, match=r"not a checkpoint file \(give e\.g\. .*latest\.pdparams\)"):
        train(tiny_config(tiny_set, tmp_path / "run", "train.epochs=2"), validate=False, resume=tmp_path / "run")


def test_settings_that_would_silently_do_less_are_warned_about(tiny_set: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    train(tiny_config(tiny_set, tmp_path, "train.epochs=1", "train.stop_at_val_top1=0.9"), validate=False)
    assert "train.stop_at_val_top1=0.9 needs validation (--validate and data.valid_list): it is ignored" in caplog.text
    assert "no optimiser state" not in caplog.text
    train(tiny_config(tiny_set, tmp_path, "train.epochs=2"), validate=False, resume=tmp_path / "epoch_1.pdparams")
    assert "epoch_1.pdparams has no optimiser state (epoch_1.pdopt): the optimiser starts afresh" in caplog.text


def _strict(text: str) -> object:
    """json.loads as jq or a browser reads JSON: NaN and Infinity are not JSON."""
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_a_diverged_run_writes_strict_json_and_cannot_be_exported(tiny_set: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_set, tmp_path, "train.epochs=2", "optimizer.values=[1e12, 1e12]")
    result = train(cfg, validate=True)
    assert any(not np.isfinite(r["train_loss"]) for r in result.history)  # it did diverge
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        _strict(line)
    for name in ("latest.json", "best.json", "result.json"):
        _strict((tmp_path / name).read_text())
    assert None in [r.get("train_loss") for r in records(tmp_path / "metrics.jsonl") if r["kind"] == "epoch"]
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC  # drawn around the nulls
    with pytest.raises(ValueError, match="non-finite weights"):
        export_checkpoint(cfg, tmp_path / "latest.pdparams", tmp_path / "repo", with_onnx=False)


def test_evaluate_command_says_where_its_confusion_matrix_went(tiny_set: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli import main

    train(tiny_config(tiny_set, tmp_path / "run", "train.epochs=1"), validate=False)
    overrides = [f"data.valid_list={tiny_set / 'val.list'}", f"data.data_prefix={tiny_set}"]
    assert main(["evaluate", "-c", "tiny", *(a for o in overrides for a in ("-o", o)),
                 "--checkpoint", str(tmp_path / "run" / "latest.pdparams"), "--out", str(tmp_path / "eval")]) == 0
    png = tmp_path / "eval" / "confusion_matrix.png"
    out = capsys.readouterr().out
    assert f"confusion matrix: {png}" in out and png.read_bytes()[:8] == PNG_MAGIC
    figures = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert f"figures: {tmp_path / 'eval' / 'evaluation.json'}" in out
    confusion = np.array(figures["confusion"])
    assert figures["count"] == confusion.sum() == 6 and len(figures["skipped"]) == 1
    assert figures["skipped"][0].startswith(f"{tiny_set / 'not_there.mp4'}: ") and "not found" in figures["skipped"][0]
    assert figures["top1"] == pytest.approx(np.trace(confusion) / 6) and f"top-1 {figures['top1']:.4f}" in out


def test_the_epoch_record_counts_the_skipped_clips(tiny_set: Path, tmp_path: Path) -> None:
    with_missing = tmp_path / "train.list"
    with_missing.write_text((tiny_set / "train.list").read_text() + "not_there.mp4 0\n")
    result = train(tiny_config(tiny_set, tmp_path / "run", f"data.train_list={with_missing}"), validate=True)
    epoch = next(r for r in records(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "epoch")
    assert (epoch["train_skipped"], epoch["val_skipped"]) == (1, 1)  # val.list lists not_there.mp4 too
    assert result.history[0]["val_count"] == 6


def test_evaluate_writes_beside_the_checkpoint_it_evaluates_or_into_out(tiny_set: Path, tmp_path: Path) -> None:
    """The config's train.output_dir may be another run's: its evaluation.json must not be overwritten."""
    from training.cli import main

    train(tiny_config(tiny_set, tmp_path / "a", "train.epochs=1", "train.max_steps_per_epoch=1"), validate=False)
    other = tmp_path / "other"
    argv = ["evaluate", "-c", "tiny", *(a for key in overrides(tiny_set, other) for a in ("-o", key)),
            "--checkpoint", str(tmp_path / "a" / "latest.pdparams")]
    assert main(argv) == 0
    figures = json.loads((tmp_path / "a" / "evaluation.json").read_text())
    assert figures["checkpoint"] == str(tmp_path / "a" / "latest.pdparams") and not other.exists()
    assert (tmp_path / "a" / "confusion_matrix.png").is_file()
    assert main([*argv, "--out", str(tmp_path / "eval")]) == 0
    assert {p.name for p in (tmp_path / "eval").iterdir()} == {"evaluation.json", "confusion_matrix.png"}
