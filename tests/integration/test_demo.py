"""The one-command demo, shrunk: warm-up sets and stages, main stage from the warmed-up backbone, export."""

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

import training.demo as demo
from service.contract.manifest import Manifest
from training.export import sha256_file
from training.motion_clips import CLASSES, SyntheticSpec
from training.recipes import LONG, QUICK, Recipe

SMALL = SyntheticSpec(min_width=96, max_width=96, min_height=64, max_height=64, min_frames=16, max_frames=16)
OVERRIDES = ["data.batch_size=4", "data.test_batch_size=4", "data.num_workers=0", "train.epochs=1"]


def _shrunk(recipe: Recipe, **changes: object) -> Recipe:
    """``recipe`` with tiny sets and one-epoch warm-ups, which are not run again when they miss their target."""
    stages = tuple(replace(s, spec=replace(SMALL, plain=True), epochs=1, num_train=4, num_val=2, retries=0)
                   for s in recipe.warmups)
    return replace(recipe, warmups=stages, num_train=8, num_val=8, num_test=8, spec=SMALL, **changes)


def test_demo_warms_up_stage_by_stage_then_trains_from_that_backbone_and_publishes(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    recipe = _shrunk(QUICK)
    stages = recipe.warmups
    with caplog.at_level(logging.WARNING, logger="training.demo"):
        summary = demo.run_demo(tmp_path / "repo", tmp_path / "work", overrides=OVERRIDES, procs=2, recipe=recipe)
    stderr = capfd.readouterr().err  # the stages run in two spawned processes each
    warned = {stage.name for stage in stages if any(f"warm-up '{stage.name}' ended" in m for m in caplog.messages)}
    assert warned == {s.name for s in stages if summary["warmup_val_top1"][s.name] < s.target}  # type: ignore[index]

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
    # evaluated and exported with three crops along the long side: 4 frames for each
    assert manifest.preprocessing.spatial_crops == 3 and manifest.io.input_shape[1] == 12
    assert summary["num_seg"] == 4 and summary["refine_epochs"] == 0 and not (work / "tsm/refine").exists()
    # Also reported on test clips that chose nothing: other clips of the main set's distribution.
    assert summary["test_list"] == str(work / "test/val.list") and summary["test_clips"] == 8
    test_videos = [line.split()[0] for line in (work / "test/val.list").read_text().splitlines()]
    assert all((work / "test" / v).read_bytes() != (work / "data" / v).read_bytes() for v in test_videos)
    assert manifest.metrics["test_top1"] == summary["test_top1"] and manifest.metrics["test_count"] == 8
    assert (work / "tsm/test/confusion_matrix.png").is_file()


def test_long_recipe_adds_a_rotation_stage_and_keeps_its_first_clips_in_every_main_epoch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recipe = _shrunk(LONG, mix_clips=2)
    work = tmp_path / "work"
    caplog.set_level(logging.INFO, logger="training.loop")
    summary = demo.run_demo(tmp_path / "repo", work, overrides=OVERRIDES, procs=1, recipe=recipe)
    manifest = Manifest.read(Path(str(summary["published"])))

    assert [s.name for s in recipe.warmups] == ["horizontal", "translation", "rotation"]
    translation, rotation = (str(work / f"tsm/warmup_{n}/best.pdparams") for n in ("translation", "rotation"))
    assert json.loads((work / "tsm/warmup_rotation/config.json").read_text())["model"]["pretrained"] == translation
    main_cfg = json.loads((work / "tsm/config.json").read_text())
    assert main_cfg["model"]["pretrained"] == rotation
    assert main_cfg["data"]["train_list"] == str(work / "mixed_73/train.list")
    assert main_cfg["data"]["data_prefix"] == str(work)
    mixed = (work / "mixed_73/train.list").read_text().splitlines()
    main = [f"data/frames_73/{line}" for line in (work / "data/frames_73/train.list").read_text().splitlines()]
    assert mixed[:8] == main  # the whole main set, then the first clips of the rotation set: one of each sense
    extra = [line.split() for line in mixed[8:]]
    assert [(folder.split("/")[0], label) for folder, _, label in extra] == [("warmup_rotation", "4"),
                                                                             ("warmup_rotation", "5")]
    for folder, count, _ in extra:
        assert len(list((work / folder).glob("img_*.jpg"))) == int(count) == 16
    val = (work / "mixed_73/val.list").read_text().splitlines()
    assert val == [f"data/frames_73/{line}" for line in (work / "data/frames_73/val.list").read_text().splitlines()]
    assert caplog.text.count("rank 0 of 1: 10 training clips") == 2  # main and refine stages read the mixed list
    assert summary["recipe"] == "long" and summary["mixed_clips"] == 2
    assert summary["val_list"] == str(work / "data/val.list")  # still reported on the held-out videos
    # The refine stage: eight segments at 96 px, from the main stage's best checkpoint, on the same mixed clips
    # extracted again at its size.
    refine_cfg = json.loads((work / "tsm/refine/config.json").read_text())
    main_best = str(work / "tsm/best.pdparams")
    assert refine_cfg["model"]["pretrained"] == main_best and f"backbone tensors from {main_best}" in caplog.text
    assert refine_cfg["model"]["num_seg"] == 8 and main_cfg["model"]["num_seg"] == 4
    assert (refine_cfg["data"]["short_side"], refine_cfg["data"]["crop_size"]) == (110, 96)
    assert (main_cfg["data"]["short_side"], main_cfg["data"]["crop_size"]) == (73, 64)
    assert refine_cfg["data"]["train_list"] == str(work / "mixed_110/train.list")
    refined = (work / "mixed_110/train.list").read_text().splitlines()
    assert [line.replace("frames_110", "frames_73") for line in refined] == mixed
    for lines, side in ((refined, 110), (mixed, 73)):  # the first frame of the first clip: its short side
        assert min(Image.open(work / lines[0].split()[0] / "img_00001.jpg").size) == side
    assert summary["num_seg"] == 8 and summary["refine_epochs"] == 1
    assert manifest.preprocessing.num_seg == 8 and manifest.io.input_shape[1] == 3 * 8  # the refined model is served
    assert (manifest.preprocessing.short_side, manifest.preprocessing.crop_size) == (110, 96)
    assert manifest.source_sha256 == sha256_file(work / "tsm/refine/best.pdparams")


def test_a_recipe_mixes_only_from_one_of_its_warm_up_stages() -> None:
    with pytest.raises(ValueError, match="mix_from"):
        replace(QUICK, mix_from="rotation", mix_clips=10)
    with pytest.raises(ValueError, match="mix_clips"):
        replace(LONG, mix_clips=0)


def test_a_warm_up_that_ends_below_its_target_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    stage = LONG.warmups[-1]  # rotation: 2 classes, target 85 %
    with caplog.at_level(logging.WARNING, logger="training.demo"):
        demo._warn_unless_taken_off(stage, 0.85)
        demo._warn_unless_taken_off(stage, 0.97, retrying=True)
        assert not caplog.messages  # at or above its target: it took off
        demo._warn_unless_taken_off(stage, 0.5, retrying=True)
        demo._warn_unless_taken_off(stage, None)  # no validation ran
    first, second = caplog.messages
    assert "warm-up 'rotation' ended at 50.0% validation top-1, short of its target 85% (chance is 50%)" in first
    assert first.endswith("running it again with another seed")
    assert "warm-up 'rotation' ended without a validation top-1" in second
    assert second.endswith("the next stage starts from its best attempt all the same, and the final top-1 may be lower")


def _best_val_top1(run: Path) -> float:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return max(r["val_top1"] for r in records if "val_top1" in r)


def test_a_warm_up_below_its_target_runs_again_with_another_seed_and_its_best_attempt_is_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shrunk = _shrunk(QUICK)
    took_off = replace(shrunk.warmups[0], target=0.0, retries=1)  # any top-1 reaches it
    missed = replace(shrunk.warmups[1], target=1.0, num_val=8, retries=1)  # not after a step: both attempts run
    recipe = replace(shrunk, warmups=(took_off, missed))
    work, run_dir = tmp_path / "work", tmp_path / "work/tsm"
    demo._generate(work, recipe)
    with caplog.at_level(logging.WARNING, logger="training.demo"):
        best, top1, attempts = demo._warm_ups(recipe, work, run_dir, True, 1, OVERRIDES)

    assert attempts == {"horizontal": 1, "translation": 2}
    assert not (run_dir / "warmup_horizontal_retry1").exists()
    first, retry = run_dir / "warmup_translation", run_dir / "warmup_translation_retry1"
    configs = [json.loads((run / "config.json").read_text()) for run in (first, retry)]
    assert [c["train"]["seed"] for c in configs] == [0, 1]  # another initialisation
    horizontal = str(run_dir / "warmup_horizontal/best.pdparams")
    assert [c["model"]["pretrained"] for c in configs] == [horizontal, horizontal]  # from the same backbone
    scores = [_best_val_top1(run) for run in (first, retry)]
    kept = retry if scores[1] > scores[0] else first  # the better attempt; the first on a tie
    assert best == kept / "best.pdparams" and top1 == {"horizontal": top1["horizontal"], "translation": max(scores)}
    warnings = [m for m in caplog.messages if "warm-up 'translation'" in m]
    assert len(warnings) == 2 and warnings[0].endswith("running it again with another seed")
    assert "starts from its best attempt all the same" in warnings[1]
    assert not any("warm-up 'horizontal'" in m for m in caplog.messages)


def test_the_next_stage_starts_from_the_warm_up_attempt_with_the_best_top1() -> None:
    assert demo._kept_attempt([0.5]) == 0
    assert demo._kept_attempt([0.5, 0.75]) == 1
    assert demo._kept_attempt([0.75, 0.5]) == 0
    assert demo._kept_attempt([0.5, 0.5]) == 0  # the earliest of equals
    assert demo._kept_attempt([None, 0.0]) == 1  # a top-1 of 0 beats no validation at all
