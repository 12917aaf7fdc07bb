"""A training command stopped by Ctrl+C, SIGTERM or a signal: where to resume, the exit code, no traceback."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.tiny_training import child_pids, tiny_config, train_argv
from training.loop import train


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
    argv = train_argv(tiny_set, tmp_path, "train.epochs=3", "train.max_steps_per_epoch=1")
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

    train(tiny_config(tiny_set, tmp_path, "train.epochs=1", "train.max_steps_per_epoch=1"), validate=False)
    monkeypatch.setattr(training.loop, "train_epoch", terminated)
    argv = [*train_argv(tiny_set, tmp_path, "train.epochs=2"), "--resume", str(tmp_path / "latest.pdparams")]
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

    cmd = [sys.executable, "-m", "training", *train_argv(tiny_set, tmp_path, "train.epochs=100000",
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


def _forked_children(pid: int) -> list[int]:
    """``pid``'s children that run its own command line: the DataLoader's forked workers."""
    own = Path(f"/proc/{pid}/cmdline").read_bytes()
    alive = []
    for kid in child_pids(pid):
        try:
            if Path(f"/proc/{kid}/cmdline").read_bytes() == own:
                alive.append(kid)
        except FileNotFoundError:
            continue
    return alive


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_a_killed_data_loading_worker_ends_the_run_saying_why_and_where_to_resume(tiny_set: Path,
                                                                                   tmp_path: Path) -> None:
    """The OOM killer's SIGKILL to a DataLoader worker ended the run with a 30-60 line traceback naming neither the
    likely cause nor the checkpoint to resume from."""
    import os
    import signal

    many = tmp_path / "many.list"
    many.write_text((tiny_set / "train.list").read_text() * 60)  # 720 clips: an epoch lasts long enough
    out = tmp_path / "run"
    argv = train_argv(tiny_set, out, f"data.train_list={many}", "data.num_workers=2", "data.batch_size=2",
                      "data.valid_list=", "train.epochs=3")
    run = subprocess.Popen([sys.executable, "-m", "training", *argv], cwd=Path(__file__).parents[2],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (out / "latest.json").exists() or not (workers := _forked_children(run.pid)):
            assert run.poll() is None and time.monotonic() < deadline, "no second epoch with workers"
            time.sleep(0.1)
        os.kill(workers[0], signal.SIGKILL)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    saved = json.loads((out / "latest.json").read_text())["epoch"]
    assert run.returncode == 1, err[-3000:]
    assert f"data loading failed during epoch {saved + 1} (" in err, err[-3000:]
    assert "out of memory? lower data.num_workers or data.batch_size)" in err
    assert f"the last saved checkpoint is {out / 'latest.pdparams'} (epoch {saved}); resume with:" in err
    assert "Traceback" not in err, err[-3000:]


def test_the_sigterm_handler_is_put_back_after_the_work() -> None:
    """The demo runs several stages in one process: a stage's handler outliving it would stop the next wrongly."""
    import signal

    from training.interrupts import on_sigterm

    def ours(signum: int, frame: object) -> None:
        raise AssertionError("not reached")

    previous = signal.signal(signal.SIGTERM, ours)
    try:
        with on_sigterm(lambda signum: None):
            assert signal.getsignal(signal.SIGTERM) is not ours
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
