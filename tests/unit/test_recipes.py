"""Which config keys a demo recipe hands to each stage, to evaluation and to export."""

from __future__ import annotations

import pytest

from training.config import load_config
from training.recipes import HORIZONTAL, LONG, QUICK, Recipe, RefineStage

MAIN = ("model.num_seg=4", "train.epochs=3", "data.short_side=73", "data.crop_size=64", "optimizer.boundaries=[2]")
REFINE = RefineStage(("model.num_seg=8", "data.short_side=110", "train.epochs=2"))


def test_exported_shape_keys_are_the_shaping_keys_of_both_stages_refine_last() -> None:
    recipe = Recipe("r", (HORIZONTAL,), overrides=MAIN, refine=REFINE)
    keys = recipe.exported_shape_keys()
    assert keys == ["model.num_seg=4", "data.short_side=73", "data.crop_size=64", "model.num_seg=8",
                    "data.short_side=110"]
    cfg = load_config("demo", keys)
    assert (cfg.model.num_seg, cfg.data.short_side, cfg.data.crop_size) == (8, 110, 64)


def test_without_refine_stage_the_main_stage_shapes_the_exported_model() -> None:
    assert Recipe("r", (HORIZONTAL,), overrides=MAIN).exported_shape_keys() == [
        "model.num_seg=4", "data.short_side=73", "data.crop_size=64"]


def test_refine_keys_take_the_main_shape_then_the_stage_own_schedule() -> None:
    keys = Recipe("r", (HORIZONTAL,), overrides=MAIN, refine=REFINE).refine_keys()
    assert keys == ["model.num_seg=4", "data.short_side=73", "data.crop_size=64", "model.num_seg=8",
                    "data.short_side=110", "train.epochs=2"]
    assert "train.epochs=3" not in keys and "optimizer.boundaries=[2]" not in keys  # the main stage's schedule


def test_shipped_recipes_export_what_their_last_stage_trains() -> None:
    long_cfg = load_config("demo", LONG.exported_shape_keys())
    assert (long_cfg.model.num_seg, long_cfg.data.short_side, long_cfg.data.crop_size) == (8, 110, 96)
    quick_cfg, demo = load_config("demo", QUICK.exported_shape_keys()), load_config("demo", [])
    assert (quick_cfg.model.num_seg, quick_cfg.data.crop_size) == (demo.model.num_seg, demo.data.crop_size)


@pytest.mark.parametrize(("mix_from", "mix_clips"), [("rotation", 10), ("horizontal", 0)])
def test_mixing_needs_one_of_the_warm_up_stages_and_some_clips(mix_from: str, mix_clips: int) -> None:
    with pytest.raises(ValueError, match="mix_from must name one of the warm-up stages"):
        Recipe("r", (HORIZONTAL,), mix_from=mix_from, mix_clips=mix_clips)
