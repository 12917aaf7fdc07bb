"""The one-command demo, shrunk: warm-up set and stage, main stage from the warmed-up backbone, export."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

import training.demo as demo
from service.contract.manifest import Manifest
from training.motion_clips import CLASSES, SyntheticSpec


def test_demo_warms_up_stage_by_stage_then_trains_from_that_backbone_and_publishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    small = SyntheticSpec(min_width=96, max_width=96, min_height=64, max_height=64, min_frames=16, max_frames=16)
    stages = tuple(replace(s, spec=replace(small, plain=True), epochs=1, num_train=4, num_val=2) for s in demo.WARMUPS)
    monkeypatch.setattr(demo, "WARMUPS", stages)
    monkeypatch.setattr(demo, "NUM_TRAIN", 8)
    monkeypatch.setattr(demo, "NUM_VAL", 8)
    import training.synthetic as synthetic

    real_generate = synthetic.generate_dataset
    monkeypatch.setattr(synthetic, "generate_dataset",  # the main set at the small size too
                        lambda out, n, m, seed=0, spec=small, **kw: real_generate(out, n, m, seed, spec, **kw))
    overrides = ["data.batch_size=4", "data.test_batch_size=4", "data.num_workers=0", "train.epochs=1"]
    summary = demo.run_demo(tmp_path / "repo", tmp_path / "work", overrides=overrides, procs=2)
    stderr = capfd.readouterr().err  # the stages run in two spawned processes each

    work = tmp_path / "work"
    assert [s.name for s in stages] == ["horizontal", "translation"]
    previous = ""
    for stage in stages:
        listed = (work / f"warmup_{stage.name}/train.list").read_text().splitlines()
        assert {CLASSES[int(line.split()[1])] for line in listed} == set(stage.classes)
        stage_cfg = json.loads((work / f"tsm/warmup_{stage.name}/config.json").read_text())
        assert stage_cfg["model"]["pretrained"] == previous  # each stage starts from the one before
        previous = str(work / f"tsm/warmup_{stage.name}/best.pdparams")
        assert Path(previous).is_file()
    assert set(summary["warmup_val_top1"]) == {"horizontal", "translation"}
    assert json.loads((work / "tsm/config.json").read_text())["model"]["pretrained"] == previous
    assert f"backbone tensors from {previous}" in stderr  # the main stage really started from it
    assert stderr.count("rank 1 of 2:") == 3 and summary["processes"] == 2  # every stage data-parallel
    main_cfg = json.loads((work / "tsm/config.json").read_text())["data"]
    assert main_cfg["format"] == "frames" and main_cfg["batch_size"] == 4  # trained on the extracted frames
    frames_list = (work / "data/frames_73/train.list").read_text().splitlines()
    assert [line.split()[1] for line in frames_list] == ["16"] * 8  # every frame of every clip
    assert summary["val_list"] == str(work / "data/val.list")  # the reported figure is on the held-out videos
    manifest = Manifest.read(Path(str(summary["published"])))
    assert manifest.labels == list(CLASSES) and manifest.preprocessing.num_seg == 4
    assert manifest.preprocessing.crop_size == 64
