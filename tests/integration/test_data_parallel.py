"""Data-parallel training on the CPU: `paddle.distributed.launch`, spawned ranks, their ends and resumes."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.integration.tiny_training import child_pids, overrides, step_losses, tiny_config


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


@pytest.mark.slow
def test_spawned_data_parallel_run_returns_what_rank_0_trained(tiny_set: Path, tmp_path: Path) -> None:
    from training.parallel import train_data_parallel
    from training.workflows import evaluate_checkpoint

    result = train_data_parallel(tiny_config(tiny_set, tmp_path, "train.epochs=2"), nprocs=2)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert result.latest_checkpoint == tmp_path / "latest.pdparams" and result.latest_checkpoint.is_file()
    assert result.best_checkpoint == tmp_path / "best.pdparams"
    assert result.best_metrics["val_top1"] == max(r["val_top1"] for r in result.history)
    assert result.history[0]["val_count"] == 6  # both ranks' shards of the 6 decodable validation clips
    assert len(step_losses(tmp_path)) == 2 * (12 // (4 * 2))  # rank 0 took half of each epoch's batches
    # The epoch's training figures are both ranks' (one batch of 4 each), not rank 0's step alone.
    first = result.history[0]
    assert first["train_loss"] != pytest.approx(step_losses(tmp_path)[0], abs=1e-6)
    assert first["train_top1"] * 8 == pytest.approx(round(first["train_top1"] * 8))
    assert json.loads((tmp_path / "config.json").read_text())["train"]["epochs"] == 2
    assert not list(tmp_path.glob("earlier_run.*"))  # a fresh folder: nothing of this run set aside as earlier
    # The ranks' shards are the whole validation list: its figures are one process's on the same checkpoint.
    alone = evaluate_checkpoint(tiny_config(tiny_set, tmp_path), tmp_path / "latest.pdparams", out_dir=tmp_path / "ev")
    second = result.history[1]
    assert (second["val_top1"], second["val_loss"]) == (pytest.approx(alone.top1), pytest.approx(alone.loss, rel=1e-5))
    # Resumed with the config naming another folder: the ranks continue in the checkpoint's, and so does the result.
    elsewhere = tmp_path / "elsewhere"
    again = train_data_parallel(tiny_config(tiny_set, elsewhere, "train.epochs=3"), nprocs=2,
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
            children = child_pids(run.pid)
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
    cmd = [sys.executable, "-c", _ENDLESS_RUN, *overrides(tiny_set, out, "train.epochs=100000")]
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

    train_data_parallel(tiny_config(tiny_set, tmp_path), nprocs=1)
    assert (tmp_path / "result.json").is_file()
    with pytest.raises(Exception, match=r"no_such\.list"):
        train_data_parallel(tiny_config(tiny_set, tmp_path, f"data.train_list={tmp_path / 'no_such.list'}"), nprocs=2)
    assert not (tmp_path / "result.json").exists()


@pytest.mark.slow
def test_a_resumed_data_parallel_run_continues_the_shuffle_where_it_stopped(tiny_set: Path, tmp_path: Path) -> None:
    from training.parallel import train_data_parallel

    # No dropout and augmentation keyed by (seed, epoch, clip): only the batch order can make the runs differ.
    straight = tiny_config(tiny_set, tmp_path / "straight", "train.epochs=3", "data.batch_size=2")
    train_data_parallel(straight, nprocs=2, validate=False)
    split = tiny_config(tiny_set, tmp_path / "split", "train.epochs=2", "data.batch_size=2")
    train_data_parallel(split, 2, validate=False)
    resumed = tiny_config(tiny_set, tmp_path / "split", "train.epochs=3", "data.batch_size=2")
    train_data_parallel(resumed, 2, validate=False, resume=tmp_path / "split" / "latest.pdparams")
    assert len(step_losses(tmp_path / "split")) == len(step_losses(tmp_path / "straight")) == 3 * 3
    np.testing.assert_allclose(step_losses(tmp_path / "split"), step_losses(tmp_path / "straight"), rtol=1e-5)


