"""The training job end to end on real MP4s: loss falls, checkpoints, resume, skipped clips, plots."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from training.config import Config, load_config
from training.loop import train
from training.synthetic import write_mp4
from training.workflows import evaluate_checkpoint, export_checkpoint

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _clip(label: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [16, 48, 64, 3]: a bright block moving right (label 0/2) or left (1/3) on a plain background."""
    frames = np.full((16, 48, 64, 3), 30 + 40 * (label // 2), np.uint8)
    y = int(rng.integers(4, 28))
    for t in range(16):
        x = 4 + 2 * t if label % 2 == 0 else 48 - 2 * t
        frames[t, y:y + 14, x:x + 10] = 230
    return frames


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_set")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12):
        write_mp4(root / f"clip_{i}.mp4", _clip(i % 4, rng), 15.0)
        lines.append(f"clip_{i}.mp4 {i % 4}")
    (root / "train.list").write_text("\n".join(lines) + "\n")
    (root / "val.list").write_text("\n".join(lines[:6]) + "\nnot_there.mp4 1\n")
    (root / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 50)
    (root / "with_bad.list").write_text("clip_0.mp4 0\nbad.mp4 1\nclip_1.mp4 1\n")
    return root


def _keys(root: Path, out: Path, *extra: str) -> list[str]:
    """The overrides of the ``tiny`` config for the set at ``root``, writing into ``out``."""
    return [f"data.train_list={root / 'train.list'}", f"data.valid_list={root / 'val.list'}",
            f"data.data_prefix={root}", f"train.output_dir={out}", *extra]


def _cfg(root: Path, out: Path, *extra: str) -> Config:
    return load_config("tiny", _keys(root, out, *extra))


def _step_losses(out: Path) -> list[float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "step"]


def test_two_steps_on_one_batch_lower_the_loss(tiny_set: Path, tmp_path: Path) -> None:
    # One batch of 4 clips seen twice: the second step must see a lower loss than the first.
    cfg = _cfg(tiny_set, tmp_path, "train.epochs=2", "train.max_steps_per_epoch=1", "data.batch_size=12",
               "optimizer.values=[0.01, 0.01]")
    train(cfg, validate=False)
    first, second = _step_losses(tmp_path)
    assert second < first


def test_validation_checkpoints_and_pictures(tiny_set: Path, tmp_path: Path) -> None:
    result = train(_cfg(tiny_set, tmp_path, "train.epochs=2"), validate=True)
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
    runs = [_cfg(tiny_set, tmp_path / name, "train.epochs=2", "data.batch_size=4") for name in ("a", "b")]
    for cfg in runs:
        train(cfg, validate=False)
    first, second = (_step_losses(tmp_path / name) for name in ("a", "b"))
    assert len(first) == 6 and first == second
    other = train(_cfg(tiny_set, tmp_path / "c", "train.epochs=2", "data.batch_size=4", "train.seed=1"), False)
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
    train(_cfg(tiny_set, tmp_path / "fused", *keys), validate=False)
    assert len(fused_calls) == 6 * 8  # 3 steps an epoch, 8 blocks: every block's shift is the fused op
    monkeypatch.setattr(training.loop, "training_shift", lambda num_seg: "slice")
    train(_cfg(tiny_set, tmp_path / "slice", *keys), validate=False)
    assert len(fused_calls) == 6 * 8
    fused, sliced = (paddle.load(str(tmp_path / run / "latest.pdparams")) for run in ("fused", "slice"))
    assert fused.keys() == sliced.keys()
    assert all(np.array_equal(fused[k].numpy(), sliced[k].numpy()) for k in fused)
    assert _step_losses(tmp_path / "fused") == _step_losses(tmp_path / "slice")


def test_two_segments_train_with_the_slices(tiny_set: Path, tmp_path: Path) -> None:
    # Paddle's fused op refuses a shift ratio of 1/2: such a run must train with the slices instead of failing.
    result = train(_cfg(tiny_set, tmp_path, "model.num_seg=2", "train.max_steps_per_epoch=1"), validate=False)
    assert result.latest_checkpoint.exists()


def test_a_reached_validation_target_ends_the_run_early(tiny_set: Path, tmp_path: Path) -> None:
    frozen = ["train.max_steps_per_epoch=1", "optimizer.values=[0.0, 0.0]"]  # lr 0: every epoch scores the same
    full = train(_cfg(tiny_set, tmp_path / "a", "train.epochs=2", "train.stop_at_val_top1=1.0", *frozen), True)
    assert [r["epoch"] for r in full.history] == [1, 2]  # below the target: every epoch runs
    score = full.history[0]["val_top1"]
    assert 0 < score < 1 and full.history[1]["val_top1"] == score
    early = train(_cfg(tiny_set, tmp_path / "b", "train.epochs=3", f"train.stop_at_val_top1={score}", *frozen), True)
    assert [r["epoch"] for r in early.history] == [1]


def test_resume_continues_at_the_next_epoch(tiny_set: Path, tmp_path: Path) -> None:
    train(_cfg(tiny_set, tmp_path, "train.epochs=1", "optimizer.boundaries=[1]"), validate=False)
    result = train(_cfg(tiny_set, tmp_path, "train.epochs=2", "optimizer.boundaries=[1]"), validate=False,
                   resume=tmp_path / "latest.pdparams")
    assert [r["epoch"] for r in result.history] == [2]
    assert result.history[0]["lr"] == pytest.approx(0.005)  # the schedule resumed past its boundary
    assert json.loads((tmp_path / "latest.json").read_text())["epoch"] == 2


def test_undecodable_clip_is_reported_by_path_and_skipped(tiny_set: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_set, tmp_path, "train.epochs=1")
    train(cfg, validate=False)
    result = evaluate_checkpoint(cfg, tmp_path / "latest.pdparams", str(tiny_set / "with_bad.list"), tmp_path)
    assert result.count == 2
    assert len(result.skipped) == 1 and result.skipped[0].startswith(str(tiny_set / "bad.mp4") + ": ")
    assert result.skipped[0].count("bad.mp4") == 1, result.skipped  # named once, then why
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == PNG_MAGIC
    assert result.confusion.sum() == 2


def test_a_run_or_evaluation_that_reads_no_clip_fails_naming_the_settings(tiny_set: Path, tmp_path: Path) -> None:
    """Every clip skipped (a wrong data_prefix) would otherwise 'succeed': NaN loss, random weights, top-1 0."""
    wrong = _cfg(tiny_set, tmp_path / "run", f"data.data_prefix={tmp_path / 'nowhere'}")
    with pytest.raises(ValueError, match=r"epoch 1: no clip of .*train\.list could be read \(\d+ skipped\): "
                                         r"check data\.data_prefix"):
        train(wrong, validate=False)
    assert not (tmp_path / "run" / "latest.pdparams").exists()
    train(_cfg(tiny_set, tmp_path / "run", "train.epochs=1"), validate=False)
    with pytest.raises(ValueError, match=r"no clip of .*val\.list could be read \(\d+ skipped\)"):
        evaluate_checkpoint(wrong, tmp_path / "run" / "latest.pdparams")
    (tmp_path / "only_bad.list").write_text("bad.mp4 0\n")
    wrong_val = _cfg(tiny_set, tmp_path / "v", f"data.valid_list={tmp_path / 'only_bad.list'}")
    with pytest.raises(ValueError, match=r"no clip of .*only_bad\.list could be read"):
        train(wrong_val, validate=True)


def test_train_refuses_at_once_what_would_fail_or_do_nothing_later(tiny_set: Path, tmp_path: Path) -> None:
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match=r"three\.txt has 3 labels, model\.num_classes is 4"):
        train(_cfg(tiny_set, tmp_path / "run", f"data.labels={tmp_path / 'three.txt'}"), validate=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    train(_cfg(tiny_set, tmp_path / "run", "train.epochs=1"), validate=False)
    with pytest.raises(ValueError, match=r"already at epoch 1 and train\.epochs is 1: nothing to train"):
        train(_cfg(tiny_set, tmp_path / "run", "train.epochs=1"), validate=False,
              resume=tmp_path / "run" / "latest.pdparams")
    with pytest.raises(ValueError, match=r"not a checkpoint file \(give e\.g\. .*latest\.pdparams\)"):
        train(_cfg(tiny_set, tmp_path / "run", "train.epochs=2"), validate=False, resume=tmp_path / "run")


def test_settings_that_would_silently_do_less_are_warned_about(tiny_set: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    train(_cfg(tiny_set, tmp_path, "train.epochs=1", "train.stop_at_val_top1=0.9"), validate=False)
    assert "train.stop_at_val_top1=0.9 needs validation (--validate and data.valid_list): it is ignored" in caplog.text
    assert "no optimiser state" not in caplog.text
    train(_cfg(tiny_set, tmp_path, "train.epochs=2"), validate=False, resume=tmp_path / "epoch_1.pdparams")
    assert "epoch_1.pdparams has no optimiser state (epoch_1.pdopt): the optimiser starts afresh" in caplog.text


def _strict(text: str) -> object:
    """json.loads as jq or a browser reads JSON: NaN and Infinity are not JSON."""
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_a_diverged_run_writes_strict_json_and_cannot_be_exported(tiny_set: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_set, tmp_path, "train.epochs=2", "optimizer.values=[1e12, 1e12]")
    result = train(cfg, validate=True)
    assert any(not np.isfinite(r["train_loss"]) for r in result.history)  # it did diverge
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        _strict(line)
    for name in ("latest.json", "best.json", "result.json"):
        _strict((tmp_path / name).read_text())
    assert None in [r.get("train_loss") for r in _records(tmp_path / "metrics.jsonl") if r["kind"] == "epoch"]
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC  # drawn around the nulls
    with pytest.raises(ValueError, match="non-finite weights"):
        export_checkpoint(cfg, tmp_path / "latest.pdparams", tmp_path / "repo", with_onnx=False)


def test_evaluate_command_says_where_its_confusion_matrix_went(tiny_set: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli import main

    train(_cfg(tiny_set, tmp_path / "run", "train.epochs=1"), validate=False)
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("how", ["seed-m-training", "tsm-train-master"])
def test_two_process_data_parallel_launch(tiny_set: Path, tmp_path: Path, how: str) -> None:
    """`paddle.distributed.launch` with two CPU processes (gloo): each rank takes half the batches. The seed's
    `-m training` from the checkout (the launcher's legacy mode runs the `training/` folder), and the installed
    `tsm-train` program from another folder with a `--master` rendezvous (the new launcher, as across nodes)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).parents[2]
    if how == "seed-m-training":
        env, cwd, target = {**os.environ, "PYTHONPATH": str(repo)}, repo, ["-m", "training"]
    else:
        program = Path(sys.executable).parent / "tsm-train"
        assert program.is_file(), "tsm-train is installed with the project (pip install -e .)"
        env, cwd = dict(os.environ), tmp_path  # no checkout on the path: the installed package only
        target = [f"--master=127.0.0.1:{_free_port()}", "--nnodes=1", str(program)]
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
           str(tmp_path / "log"), *target, "train", "-c", "tiny", "-o",
           f"data.train_list={tiny_set / 'train.list'}", "-o", f"data.data_prefix={tiny_set}",
           "-o", "train.epochs=1", "-o", f"train.output_dir={tmp_path / 'run'}"]
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    steps = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "step"]
    assert len(steps) == 12 // (4 * 2)  # rank 0's share of 12 clips in batches of 4
    assert (tmp_path / "run" / "latest.pdparams").exists()
    assert "rank 1 of 2" in (tmp_path / "log" / "workerlog.1").read_text()


def test_resume_keeps_the_earlier_best_checkpoint(tiny_set: Path, tmp_path: Path) -> None:
    train(_cfg(tiny_set, tmp_path, "train.epochs=1"), validate=True)
    meta = json.loads((tmp_path / "best.json").read_text())
    meta["metrics"]["val_top1"] = 2.0  # an earlier best that no later epoch can beat
    (tmp_path / "best.json").write_text(json.dumps(meta))
    before = (tmp_path / "best.pdparams").read_bytes()
    result = train(_cfg(tiny_set, tmp_path, "train.epochs=2"), validate=True, resume=tmp_path / "latest.pdparams")
    assert result.best_metrics["val_top1"] == 2.0
    assert result.best_checkpoint == tmp_path / "best.pdparams"
    assert (tmp_path / "best.pdparams").read_bytes() == before


@pytest.mark.slow
def test_spawned_data_parallel_run_returns_what_rank_0_trained(tiny_set: Path, tmp_path: Path) -> None:
    from training.parallel import train_data_parallel

    result = train_data_parallel(_cfg(tiny_set, tmp_path, "train.epochs=2"), nprocs=2)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert result.latest_checkpoint == tmp_path / "latest.pdparams" and result.latest_checkpoint.is_file()
    assert result.best_checkpoint == tmp_path / "best.pdparams"
    assert result.best_metrics["val_top1"] == max(r["val_top1"] for r in result.history)
    assert result.history[0]["val_count"] == 6  # both ranks' shards of the 6 decodable validation clips
    assert len(_step_losses(tmp_path)) == 2 * (12 // (4 * 2))  # rank 0 took half of each epoch's batches
    # The epoch's training figures are both ranks' (one batch of 4 each), not rank 0's step alone.
    first = result.history[0]
    assert first["train_loss"] != pytest.approx(_step_losses(tmp_path)[0], abs=1e-6)
    assert first["train_top1"] * 8 == pytest.approx(round(first["train_top1"] * 8))
    assert json.loads((tmp_path / "config.json").read_text())["train"]["epochs"] == 2
    assert not list(tmp_path.glob("earlier_run.*"))  # a fresh folder: nothing of this run set aside as earlier
    # Resumed with the config naming another folder: the ranks continue in the checkpoint's, and so does the result.
    elsewhere = tmp_path / "elsewhere"
    again = train_data_parallel(_cfg(tiny_set, elsewhere, "train.epochs=3"), nprocs=2,
                                resume=tmp_path / "latest.pdparams")
    assert [r["epoch"] for r in again.history] == [3] and again.latest_checkpoint == tmp_path / "latest.pdparams"
    assert not elsewhere.exists()


# A demo's data-parallel stage in a process of its own; `-c`: spawn's ranks have no main file to import again
_ENDLESS_RUN = """
import sys
from training.config import load_config
from training.parallel import train_data_parallel
train_data_parallel(load_config("tiny", sys.argv[1:]), nprocs=2, validate=False)
"""


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started and has not reaped (Linux's /proc)."""
    return [int(c) for f in Path(f"/proc/{pid}/task").glob("*/children") for c in f.read_text().split()]


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs: a zombie does not (PID 1 in a container may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _wait_for_training_ranks(run: subprocess.Popen[bytes], out: Path, log: Path) -> list[int]:
    """The run's child processes (two ranks and multiprocessing's resource tracker), once rank 0 has trained a
    step: the ranks are then past their start, where they arrange to die with the parent."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert run.poll() is None, log.read_text()[-3000:]
        metrics = out / "metrics.jsonl"
        if metrics.is_file() and '"kind": "step"' in metrics.read_text():
            children = _children(run.pid)
            assert sum("spawn_main" in Path(f"/proc/{c}/cmdline").read_text() for c in children) == 2, children
            return children
        time.sleep(0.1)
    raise AssertionError("no training step in 120 s: " + log.read_text()[-3000:])


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals and /proc are Linux's")
@pytest.mark.parametrize("how", ["SIGKILL to the parent", "SIGTERM to the parent", "SIGTERM to the group"])
def test_the_ranks_of_a_killed_data_parallel_run_end_with_it(tiny_set: Path, tmp_path: Path, how: str) -> None:
    """A killed `python -m training demo` left its two spawned ranks training for minutes under PID 1, holding its
    pipes open. They must end within seconds, and a SIGTERM (`timeout` sends one to the whole group) must end
    the run quietly: no Python or C++ traceback from Paddle's handler."""
    import os
    import signal

    out, log = tmp_path / "run", tmp_path / "log"
    cmd = [sys.executable, "-c", _ENDLESS_RUN, *_keys(tiny_set, out, "train.epochs=100000")]
    with log.open("wb") as sink:  # a file, not a pipe nobody reads while it fills
        run = subprocess.Popen(cmd, cwd=Path(__file__).parents[2], stdout=sink, stderr=subprocess.STDOUT,
                               start_new_session=True)
    children: list[int] = []
    try:
        children = _wait_for_training_ranks(run, out, log)
        if how == "SIGKILL to the parent":
            run.kill()
        elif how == "SIGTERM to the parent":
            run.terminate()
        else:
            os.killpg(run.pid, signal.SIGTERM)
        code = run.wait(30)
        deadline = time.monotonic() + 10
        while any(map(_running, children)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [c for c in children if _running(c)], f"still running after {how}: {children}"
        text = log.read_text()
        if how == "SIGKILL to the parent":
            assert code == -signal.SIGKILL
        else:
            assert code == 128 + signal.SIGTERM, text[-3000:]
            assert "SIGTERM: stopping the data-parallel training" in text
            assert "Traceback" not in text and "FatalError" not in text, text[-3000:]
    finally:  # whatever failed, leave nothing of the run training
        for pid in [run.pid, *children]:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        run.wait(30)


def test_a_failed_data_parallel_run_raises_instead_of_reporting_an_old_result(tiny_set: Path, tmp_path: Path) -> None:
    from training.parallel import train_data_parallel

    train_data_parallel(_cfg(tiny_set, tmp_path), nprocs=1)
    assert (tmp_path / "result.json").is_file()
    with pytest.raises(Exception, match=r"no_such\.list"):
        train_data_parallel(_cfg(tiny_set, tmp_path, f"data.train_list={tmp_path / 'no_such.list'}"), nprocs=2)
    assert not (tmp_path / "result.json").exists()


@pytest.mark.slow
def test_a_resumed_data_parallel_run_continues_the_shuffle_where_it_stopped(tiny_set: Path, tmp_path: Path) -> None:
    from training.parallel import train_data_parallel

    # No dropout and augmentation keyed by (seed, epoch, clip): only the batch order can make the runs differ.
    straight = _cfg(tiny_set, tmp_path / "straight", "train.epochs=3", "data.batch_size=2")
    train_data_parallel(straight, nprocs=2, validate=False)
    train_data_parallel(_cfg(tiny_set, tmp_path / "split", "train.epochs=2", "data.batch_size=2"), 2, validate=False)
    resumed = _cfg(tiny_set, tmp_path / "split", "train.epochs=3", "data.batch_size=2")
    train_data_parallel(resumed, 2, validate=False, resume=tmp_path / "split" / "latest.pdparams")
    assert len(_step_losses(tmp_path / "split")) == len(_step_losses(tmp_path / "straight")) == 3 * 3
    np.testing.assert_allclose(_step_losses(tmp_path / "split"), _step_losses(tmp_path / "straight"), rtol=1e-5)


def _records(path: Path) -> list[dict[str, float | str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _plotted_epochs(monkeypatch: pytest.MonkeyPatch) -> list[list[float]]:
    """The epochs in the log each time the curves are drawn, as the curves see them."""
    import training.loop
    from training.plots import plot_curves

    seen: list[list[float]] = []

    def recording(log: Path, out: Path) -> Path:
        seen.append([r["epoch"] for r in _records(log) if r["kind"] == "epoch"])
        return plot_curves(log, out)

    monkeypatch.setattr(training.loop, "plot_curves", recording)
    return seen


def test_a_fresh_run_sets_the_earlier_run_aside_whole(tiny_set: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh run into a folder holding another run moves that run's log and checkpoints into earlier_run.<n>:
    best.pdparams can never be the earlier run's beside this run's latest, and nothing is lost."""
    short = ["train.max_steps_per_epoch=1"]
    train(_cfg(tiny_set, tmp_path, "train.epochs=2", *short), validate=True)
    first = (tmp_path / "metrics.jsonl").read_text()
    first_best = (tmp_path / "best.pdparams").read_bytes()
    (tmp_path / "notes.txt").write_text("the user's own file")
    plotted = _plotted_epochs(monkeypatch)
    train(_cfg(tiny_set, tmp_path, "train.epochs=1", *short), validate=False)
    assert [r["epoch"] for r in _records(tmp_path / "metrics.jsonl") if r["kind"] == "epoch"] == [1]
    assert plotted == [[1]]  # the curves show this run only, not a zigzag through both
    earlier = tmp_path / "earlier_run.1"
    assert (earlier / "metrics.jsonl").read_text() == first and (earlier / "best.pdparams").read_bytes() == first_best
    assert {"latest.pdparams", "epoch_2.pdparams", "result.json", "curves.png"} <= {f.name for f in earlier.iterdir()}
    assert not (tmp_path / "best.pdparams").exists()  # this run did not validate: it has no best
    assert not (tmp_path / "epoch_2.pdparams").exists() and (tmp_path / "notes.txt").is_file()
    train(_cfg(tiny_set, tmp_path, "train.epochs=1", *short), validate=False)
    assert (earlier / "metrics.jsonl").read_text() == first and (tmp_path / "earlier_run.2" / "metrics.jsonl").is_file()


def test_resuming_an_earlier_epoch_drops_the_later_records(tiny_set: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    short = ["train.max_steps_per_epoch=1"]
    train(_cfg(tiny_set, tmp_path, "train.epochs=3", *short), validate=False)
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"kind": "step", "ep')  # a record torn by a kill
    plotted = _plotted_epochs(monkeypatch)
    train(_cfg(tiny_set, tmp_path, "train.epochs=2", *short), validate=False, resume=tmp_path / "epoch_1.pdparams")
    records = _records(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    assert [r["epoch"] for r in records if r["kind"] == "step"] == [1, 2]  # epoch 3's steps went with it
    assert plotted == [[1], [1, 2]]  # redrawn from the cleaned log at once, then after epoch 2
    assert not (tmp_path / "metrics.jsonl.1").exists()  # a resumed run continues its log


def test_a_resumed_run_continues_in_its_checkpoints_folder(tiny_set: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Resumed with another train.output_dir (the config's default, or a run from elsewhere), a run wrote a
    second folder holding only its resumed epochs, or merged into and trimmed another run's log."""
    caplog.set_level("INFO", logger="training.run_dir")
    short = ["train.max_steps_per_epoch=1"]
    train(_cfg(tiny_set, tmp_path / "a", "train.epochs=1", *short), validate=False)
    other = tmp_path / "b"
    result = train(_cfg(tiny_set, other, "train.epochs=2", *short), validate=False,
                   resume=tmp_path / "a" / "latest.pdparams")
    assert not other.exists()
    assert result.output_dir == tmp_path / "a" and result.latest_checkpoint == tmp_path / "a" / "latest.pdparams"
    records = _records(tmp_path / "a" / "metrics.jsonl")
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    assert json.loads((tmp_path / "a" / "config.json").read_text())["train"]["output_dir"] == str(tmp_path / "a")
    assert f"resuming the run in {tmp_path / 'a'} (the folder of latest.pdparams), not train.output_dir {other}" \
        in caplog.text


def test_resuming_an_older_epoch_sets_the_later_epochs_and_their_best_aside(tiny_set: Path, tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Resumed from epoch_1 of a three-epoch run, epoch_3.pdparams and a best.pdparams of epoch 3 stayed beside
    the resumed run's files, and that best kept beating the resumed epochs."""
    import shutil

    frozen = ["train.max_steps_per_epoch=1", "optimizer.values=[0.0, 0.0]"]  # every epoch validates the same
    train(_cfg(tiny_set, tmp_path, "train.epochs=3", *frozen), validate=True)
    for suffix in (".pdparams", ".json"):  # as if epoch 3 had validated best
        shutil.copy(tmp_path / f"latest{suffix}", tmp_path / f"best{suffix}")
    whole_log = (tmp_path / "metrics.jsonl").read_text()
    result = train(_cfg(tiny_set, tmp_path, "train.epochs=2", *frozen), validate=True,
                   resume=tmp_path / "epoch_1.pdparams")
    assert "abandons the later epochs of the run in" in caplog.text
    assert "best.pdparams (epoch 3), epoch_2.pdparams (epoch 2), epoch_3.pdparams (epoch 3), latest.pdparams " \
           "(epoch 3)" in caplog.text
    aside = tmp_path / "earlier_run.1"
    assert (aside / "metrics.jsonl").read_text() == whole_log  # the abandoned run, whole
    assert {json.loads((aside / f"{stem}.json").read_text())["epoch"] for stem in ("best", "latest", "epoch_3")} == {3}
    assert not (aside / "epoch_1.pdparams").exists()  # the resumed run's own epoch stays in place
    assert {p.name for p in tmp_path.glob("epoch_*.pdparams")} == {"epoch_1.pdparams", "epoch_2.pdparams"}
    assert [json.loads((tmp_path / f"{stem}.json").read_text())["epoch"] for stem in ("latest", "best")] == [2, 2]
    assert result.best_checkpoint == tmp_path / "best.pdparams"  # the resumed run's, not epoch 3's
    assert [r["epoch"] for r in _records(tmp_path / "metrics.jsonl") if r["kind"] == "epoch"] == [1, 2]


def test_the_epoch_record_counts_the_skipped_clips(tiny_set: Path, tmp_path: Path) -> None:
    with_missing = tmp_path / "train.list"
    with_missing.write_text((tiny_set / "train.list").read_text() + "not_there.mp4 0\n")
    result = train(_cfg(tiny_set, tmp_path / "run", f"data.train_list={with_missing}"), validate=True)
    epoch = next(r for r in _records(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "epoch")
    assert (epoch["train_skipped"], epoch["val_skipped"]) == (1, 1)  # val.list lists not_there.mp4 too
    assert result.history[0]["val_count"] == 6


def _train_argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "-c", "tiny", *(a for key in _keys(root, out, *extra) for a in ("-o", key))]


@pytest.mark.parametrize("stop_in", [1, 2])
def test_an_interrupted_train_command_names_its_checkpoint_and_how_to_resume(
        tiny_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        stop_in: int) -> None:
    import training.loop
    from training.cli import main

    epochs: list[int] = []
    real = training.loop.train_epoch

    def stopping(*args: object) -> dict[str, float]:
        epochs.append(1)
        if len(epochs) == stop_in:
            raise KeyboardInterrupt
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(training.loop, "train_epoch", stopping)
    argv = _train_argv(tiny_set, tmp_path, "train.epochs=3", "train.max_steps_per_epoch=1")
    assert main(argv) == 130
    message = caplog.records[-1].getMessage()
    if stop_in == 1:
        assert message == "interrupted during epoch 1: no epoch had finished, so nothing was saved"
        return
    latest = tmp_path / "latest.pdparams"
    assert message.startswith(f"interrupted during epoch 2: the last saved checkpoint is {latest} (epoch 1); "
                              "resume with:\n  python -m training train -c tiny -o ")
    assert message.endswith(f" --resume {latest}")
    monkeypatch.setattr(training.loop, "train_epoch", real)
    import shlex

    resume = shlex.split(message.split("python -m training ")[1])  # the command it gives, run
    assert main(resume) == 0
    assert json.loads((tmp_path / "latest.json").read_text())["epoch"] == 3


def test_a_terminated_train_command_exits_143(tiny_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    import training.loop
    from training.cli import main
    from training.interrupts import Terminated

    def terminated(*args: object) -> dict[str, float]:
        raise Terminated()

    train(_cfg(tiny_set, tmp_path, "train.epochs=1", "train.max_steps_per_epoch=1"), validate=False)
    monkeypatch.setattr(training.loop, "train_epoch", terminated)
    argv = [*_train_argv(tiny_set, tmp_path, "train.epochs=2"), "--resume", str(tmp_path / "latest.pdparams")]
    assert main(argv) == 143
    assert caplog.records[-1].getMessage().startswith(
        f"interrupted during epoch 2: the last saved checkpoint is {tmp_path / 'latest.pdparams'} (epoch 1)")


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("signum", [2, 15], ids=["SIGINT", "SIGTERM"])
def test_a_signalled_training_process_says_where_to_resume_without_a_traceback(
        tiny_set: Path, tmp_path: Path, signum: int) -> None:
    """Ctrl+C printed an 81-line KeyboardInterrupt traceback, SIGTERM (Paddle's handler) exited silently."""
    import signal

    cmd = [sys.executable, "-m", "training", *_train_argv(tiny_set, tmp_path, "train.epochs=100000",
                                                          "train.max_steps_per_epoch=1")]
    # SIGINT as a terminal sends it: a child started in the background would inherit it ignored
    run = subprocess.Popen(cmd, cwd=Path(__file__).parents[2], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "latest.json").exists():  # written last of a checkpoint (its epoch is logged first)
            assert run.poll() is None and time.monotonic() < deadline, "no checkpoint saved"
            time.sleep(0.1)
        run.send_signal(signum)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 128 + signum, err[-3000:]
    assert "Traceback" not in err and "FatalError" not in err, err[-3000:]
    latest = tmp_path / "latest.pdparams"
    saved = json.loads((tmp_path / "latest.json").read_text())["epoch"]
    assert f"interrupted during epoch {saved + 1}: the last saved checkpoint is {latest} (epoch {saved})" in err
    assert f"--resume {latest}" in err


def test_evaluate_writes_beside_the_checkpoint_it_evaluates_or_into_out(tiny_set: Path, tmp_path: Path) -> None:
    """The config's train.output_dir may be another run's: its evaluation.json must not be overwritten."""
    from training.cli import main

    train(_cfg(tiny_set, tmp_path / "a", "train.epochs=1", "train.max_steps_per_epoch=1"), validate=False)
    other = tmp_path / "other"
    argv = ["evaluate", "-c", "tiny", *(a for key in _keys(tiny_set, other) for a in ("-o", key)),
            "--checkpoint", str(tmp_path / "a" / "latest.pdparams")]
    assert main(argv) == 0
    figures = json.loads((tmp_path / "a" / "evaluation.json").read_text())
    assert figures["checkpoint"] == str(tmp_path / "a" / "latest.pdparams") and not other.exists()
    assert (tmp_path / "a" / "confusion_matrix.png").is_file()
    assert main([*argv, "--out", str(tmp_path / "eval")]) == 0
    assert {p.name for p in (tmp_path / "eval").iterdir()} == {"evaluation.json", "confusion_matrix.png"}
