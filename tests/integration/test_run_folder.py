"""A run's folder across runs and resumes: the earlier run set aside whole, later epochs abandoned, the best kept."""

import json
from pathlib import Path

import pytest

from tests.integration.tiny_training import records, tiny_config
from training.loop import train


def test_resume_keeps_the_earlier_best_checkpoint(tiny_set: Path, tmp_path: Path) -> None:
    train(tiny_config(tiny_set, tmp_path, "train.epochs=1"), validate=True)
    meta = json.loads((tmp_path / "best.json").read_text())
    meta["metrics"]["val_top1"] = 2.0  # an earlier best that no later epoch can beat
    (tmp_path / "best.json").write_text(json.dumps(meta))
    before = (tmp_path / "best.pdparams").read_bytes()
    result = train(tiny_config(tiny_set, tmp_path, "train.epochs=2"), validate=True,
                   resume=tmp_path / "latest.pdparams")
    assert result.best_metrics["val_top1"] == 2.0
    assert result.best_checkpoint == tmp_path / "best.pdparams"
    assert (tmp_path / "best.pdparams").read_bytes() == before


def _plotted_epochs(monkeypatch: pytest.MonkeyPatch) -> list[list[float]]:
    """The epochs in the log each time the curves are drawn, as the curves see them."""
    import training.loop
    from training.plots import plot_curves

    seen: list[list[float]] = []

    def recording(log: Path, out: Path) -> Path:
        seen.append([r["epoch"] for r in records(log) if r["kind"] == "epoch"])
        return plot_curves(log, out)

    monkeypatch.setattr(training.loop, "plot_curves", recording)
    return seen


def test_a_fresh_run_sets_the_earlier_run_aside_whole(tiny_set: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh run into a folder holding another run moves that run's log and checkpoints into earlier_run.<n>:
    best.pdparams can never be the earlier run's beside this run's latest, and nothing is lost."""
    short = ["train.max_steps_per_epoch=1"]
    train(tiny_config(tiny_set, tmp_path, "train.epochs=2", *short), validate=True)
    first = (tmp_path / "metrics.jsonl").read_text()
    first_best = (tmp_path / "best.pdparams").read_bytes()
    (tmp_path / "notes.txt").write_text("the user's own file")
    plotted = _plotted_epochs(monkeypatch)
    train(tiny_config(tiny_set, tmp_path, "train.epochs=1", *short), validate=False)
    assert [r["epoch"] for r in records(tmp_path / "metrics.jsonl") if r["kind"] == "epoch"] == [1]
    assert plotted == [[1]]  # the curves show this run only, not a zigzag through both
    earlier = tmp_path / "earlier_run.1"
    assert (earlier / "metrics.jsonl").read_text() == first and (earlier / "best.pdparams").read_bytes() == first_best
    assert {"latest.pdparams", "epoch_2.pdparams", "result.json", "curves.png"} <= {f.name for f in earlier.iterdir()}
    assert not (tmp_path / "best.pdparams").exists()  # this run did not validate: it has no best
    assert not (tmp_path / "epoch_2.pdparams").exists() and (tmp_path / "notes.txt").is_file()
    train(tiny_config(tiny_set, tmp_path, "train.epochs=1", *short), validate=False)
    assert (earlier / "metrics.jsonl").read_text() == first and (tmp_path / "earlier_run.2" / "metrics.jsonl").is_file()


def test_resuming_an_earlier_epoch_drops_the_laterrecords(tiny_set: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    short = ["train.max_steps_per_epoch=1"]
    train(tiny_config(tiny_set, tmp_path, "train.epochs=3", *short), validate=False)
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"kind": "step", "ep')  # a record torn by a kill
    plotted = _plotted_epochs(monkeypatch)
    train(tiny_config(tiny_set, tmp_path, "train.epochs=2", *short), validate=False,
          resume=tmp_path / "epoch_1.pdparams")
    logged = records(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in logged if r["kind"] == "epoch"] == [1, 2]
    assert [r["epoch"] for r in logged if r["kind"] == "step"] == [1, 2]  # epoch 3's steps went with it
    assert plotted == [[1], [1, 2]]  # redrawn from the cleaned log at once, then after epoch 2
    assert not (tmp_path / "metrics.jsonl.1").exists()  # a resumed run continues its log


def test_a_resumed_run_continues_in_its_checkpoints_folder(tiny_set: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Resumed with another train.output_dir (the config's default, or a run from elsewhere), a run wrote a
    second folder holding only its resumed epochs, or merged into and trimmed another run's log."""
    caplog.set_level("INFO", logger="training.run_dir")
    short = ["train.max_steps_per_epoch=1"]
    train(tiny_config(tiny_set, tmp_path / "a", "train.epochs=1", *short), validate=False)
    other = tmp_path / "b"
    result = train(tiny_config(tiny_set, other, "train.epochs=2", *short), validate=False,
                   resume=tmp_path / "a" / "latest.pdparams")
    assert not other.exists()
    assert result.output_dir == tmp_path / "a" and result.latest_checkpoint == tmp_path / "a" / "latest.pdparams"
    logged = records(tmp_path / "a" / "metrics.jsonl")
    assert [r["epoch"] for r in logged if r["kind"] == "epoch"] == [1, 2]
    assert json.loads((tmp_path / "a" / "config.json").read_text())["train"]["output_dir"] == str(tmp_path / "a")
    assert f"resuming the run in {tmp_path / 'a'} (the folder of latest.pdparams), not train.output_dir {other}" \
        in caplog.text


def test_resuming_an_older_epoch_sets_the_later_epochs_and_their_best_aside(tiny_set: Path, tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Resumed from epoch_1 of a three-epoch run, epoch_3.pdparams and a best.pdparams of epoch 3 stayed beside
    the resumed run's files, and that best kept beating the resumed epochs."""
    import shutil

    frozen = ["train.max_steps_per_epoch=1", "optimizer.values=[0.0, 0.0]"]  # every epoch validates the same
    train(tiny_config(tiny_set, tmp_path, "train.epochs=3", *frozen), validate=True)
    for suffix in (".pdparams", ".json"):  # as if epoch 3 had validated best
        shutil.copy(tmp_path / f"latest{suffix}", tmp_path / f"best{suffix}")
    whole_log = (tmp_path / "metrics.jsonl").read_text()
    result = train(tiny_config(tiny_set, tmp_path, "train.epochs=2", *frozen), validate=True,
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
    assert [r["epoch"] for r in records(tmp_path / "metrics.jsonl") if r["kind"] == "epoch"] == [1, 2]


def test_an_output_folder_the_run_cannot_write_is_refused_before_the_first_epoch(
        tiny_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only folder (here its writes refused: the tests may run as root) failed at the first checkpoint."""
    import errno

    real = Path.write_bytes

    def refused(self: Path, data: bytes) -> int:
        if self.name.startswith(".write-test-"):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", refused)
    with pytest.raises(OSError, match=rf"train\.output_dir {tmp_path} is not writable \(Permission denied\)"):
        train(tiny_config(tiny_set, tmp_path, "train.epochs=1"), validate=False)
    assert not (tmp_path / "metrics.jsonl").exists()
