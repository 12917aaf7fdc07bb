"""The one-command demo: synthetic motion videos -> train TSM -> evaluate -> publish into model_repo."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.contract.manifest import Manifest, scan_repository
from training.checkpoint import to_json
from training.config import Config, load_config
from training.listfile import parse_list
from training.motion_clips import CLASSES
from training.recipes import QUICK, Recipe, WarmupStage

if TYPE_CHECKING:
    from training.loop import TrainResult

log = logging.getLogger(__name__)

BATCH = 16  # clips per optimiser step, over all processes


@dataclass(frozen=True)
class FrameLists:
    """Frames lists of a training stage; their folders are relative to ``prefix``."""

    train: Path
    val: Path
    prefix: Path


def _extract(root: Path, short_side: int) -> FrameLists:
    """Extract the frames of ``root``'s train and val videos, scaled to the test pipeline's short side."""
    from training.frames import extract_frames

    out = root / f"frames_{short_side}"
    train, val = (extract_frames(root / f"{split}.list", out, data_prefix=str(root), short_side=short_side)
                  for split in ("train", "val"))
    return FrameLists(train, val, out)


def _relative_lines(list_file: Path, prefix: Path, root: Path) -> list[str]:
    """The lines of frames list ``list_file`` (folders relative to ``prefix``), folders made relative to ``root``."""
    samples = parse_list(list_file, "frames", data_prefix=str(prefix))
    return [f"{s.path.relative_to(root)} {s.num_frames} {s.label}\n" for s in samples]


def _mix(workdir: Path, main: FrameLists, recipe: Recipe, short_side: int) -> FrameLists:
    """The main set's frames plus the first ``recipe.mix_clips`` training clips of warm-up set ``recipe.mix_from``
    (classes alternate in its list, so they stay balanced), as one pair of lists relative to ``workdir``."""
    from training.frames import extract_frames

    stage = workdir / f"warmup_{recipe.mix_from}"
    chosen = stage / "mix.list"
    chosen.write_text("".join((stage / "train.list").read_text().splitlines(keepends=True)[:recipe.mix_clips]))
    extra = extract_frames(chosen, stage / f"frames_{short_side}", data_prefix=str(stage), short_side=short_side)
    out = workdir / f"mixed_{short_side}"
    out.mkdir(parents=True, exist_ok=True)
    train, val = out / "train.list", out / "val.list"
    train.write_text("".join(_relative_lines(main.train, main.prefix, workdir)
                             + _relative_lines(extra, extra.parent, workdir)))
    val.write_text("".join(_relative_lines(main.val, main.prefix, workdir)))  # validation stays the main set's
    return FrameLists(train, val, workdir)


def _video_config(data: Path, run_dir: Path, shift: bool, overrides: list[str]) -> Config:
    """The demo config pointed at one generated set of videos, writing into ``run_dir``."""
    return load_config("demo", [
        f"data.train_list={data / 'train.list'}", f"data.valid_list={data / 'val.list'}",
        f"data.labels={data / 'labels.txt'}", f"data.data_prefix={data}", f"train.output_dir={run_dir}",
        f"model.shift={'true' if shift else 'false'}", f"name={'tsm-motion' if shift else 'tsn-motion'}",
        *overrides,
    ])


def _stage_config(data: Path, frames: FrameLists | None, run_dir: Path, shift: bool, procs: int,
                  overrides: list[str]) -> Config:
    """One training stage on a generated set (on ``frames`` if given), ``BATCH`` clips per step split over
    ``procs`` processes."""
    on_frames = [] if frames is None else [
        "data.format=frames", f"data.train_list={frames.train}", f"data.valid_list={frames.val}",
        f"data.data_prefix={frames.prefix}"]
    return _video_config(data, run_dir, shift, [*on_frames, f"data.batch_size={BATCH // procs}", *overrides])


def _warm_up(stage: WarmupStage, data: Path, run_dir: Path, shift: bool, start_from: Path | None, procs: int,
             overrides: list[str], attempt: int = 0) -> TrainResult:
    """One warm-up stage: constant lr 1e-3, at most ``stage.epochs``, from ``start_from``'s backbone if given;
    attempt ``n`` > 0 trains with the configured seed plus ``n``. On the videos: a stage sees its clips once or
    twice, too few times to repay extracting their frames."""
    from training.parallel import train_data_parallel

    init = [f"model.pretrained={start_from}"] if start_from else []
    keys = [f"train.epochs={stage.epochs}", f"train.stop_at_val_top1={stage.target}",
            f"optimizer.boundaries=[{stage.epochs}]", "optimizer.values=[0.001, 0.001]", *init, *overrides]
    cfg = _stage_config(data, None, run_dir, shift, procs, keys)
    cfg.train.seed += attempt
    return train_data_parallel(cfg, procs)


TEST_SEED = 100  # the test clips' seed: apart from the main set's (0) and the warm-up sets' (1, 2, ...)


def _generate(workdir: Path, recipe: Recipe) -> None:
    """The warm-up sets, the main set and the test set (``workdir/test``, its clips listed in ``val.list``); a
    complete earlier run is reused."""
    from training.synthetic import generate_dataset

    for i, stage in enumerate(recipe.warmups):
        generate_dataset(workdir / f"warmup_{stage.name}", stage.num_train, stage.num_val, seed=1 + i,
                         spec=stage.spec, classes=[CLASSES.index(c) for c in stage.classes])
    generate_dataset(workdir / "data", recipe.num_train, recipe.num_val, seed=0, spec=recipe.spec)
    generate_dataset(workdir / "test", 0, recipe.num_test, seed=TEST_SEED, spec=recipe.spec)


def _frames(workdir: Path, recipe: Recipe, keys: list[str]) -> FrameLists:
    """What a main or refine stage with config ``keys`` trains on, at its short side: the main set's frames, plus
    the warm-up clips the recipe mixes in; a complete earlier extraction at that size is reused."""
    short_side = load_config("demo", keys).data.short_side
    frames = _extract(workdir / "data", short_side)
    return frames if recipe.mix_from is None else _mix(workdir, frames, recipe, short_side)


def _warm_ups(recipe: Recipe, workdir: Path, run_dir: Path, shift: bool, procs: int,
              overrides: list[str]) -> tuple[Path | None, dict[str, float | None], dict[str, int]]:
    """The recipe's warm-up stages in order, each from the one before; (the last one's checkpoint, each stage's
    best validation top-1, each stage's attempts)."""
    warm_best: Path | None = None
    warm_top1: dict[str, float | None] = {}
    attempts: dict[str, int] = {}
    for stage in recipe.warmups:
        warm, warm_top1[stage.name], attempts[stage.name] = _warm_up_until_taken_off(
            stage, workdir, run_dir, shift, warm_best, procs, overrides)
        warm_best = warm.best_checkpoint or warm.latest_checkpoint
    return warm_best, warm_top1, attempts


def _warm_up_until_taken_off(stage: WarmupStage, workdir: Path, run_dir: Path, shift: bool, start: Path | None,
                             procs: int, overrides: list[str]) -> tuple[TrainResult, float | None, int]:
    """Warm-up ``stage`` from ``start``, run again with another seed (into ``warmup_<name>_retry<n>``) while it
    ends below its target, at most ``stage.retries`` more times; (the attempt with the best validation top-1,
    that top-1, the attempts run)."""
    # Whether a stage takes off within its epochs depends on its initialisation: of three seeds of the quick
    # demo, one left the `horizontal` stage at chance for all 4 epochs, and the final model with it
    # (training/REPORT.md, Results). Another seed costs the stage's epochs again; a model at chance costs more.
    name = f"warmup_{stage.name}"
    results: list[TrainResult] = []
    top1s: list[float | None] = []
    for attempt in range(stage.retries + 1):
        out = run_dir / (name if attempt == 0 else f"{name}_retry{attempt}")
        results.append(_warm_up(stage, workdir / name, out, shift, start, procs, overrides, attempt))
        top1s.append(results[-1].best_metrics.get("val_top1"))
        if _taken_off(stage, top1s[-1]):
            break
        _warn_unless_taken_off(stage, top1s[-1], retrying=attempt < stage.retries)
    kept = _kept_attempt(top1s)
    return results[kept], top1s[kept], len(results)


def _kept_attempt(top1s: list[float | None]) -> int:
    """Which of a stage's attempts (their best validation top-1, ``None`` without one) the next stage starts from:
    the highest, the earliest of equals."""
    return max(range(len(top1s)), key=lambda i: -1.0 if top1s[i] is None else top1s[i])


def _taken_off(stage: WarmupStage, top1: float | None) -> bool:
    """Whether warm-up ``stage`` reached its target (its best validation top-1 ``top1``, ``None`` without one)."""
    return top1 is not None and top1 >= stage.target


def _warn_unless_taken_off(stage: WarmupStage, top1: float | None, retrying: bool = False) -> None:
    """Log a warning if warm-up ``stage`` ended below its target (best validation top-1 ``top1``), saying whether
    it runs again (``retrying``) or the next stage starts from it all the same."""
    # Whether a stage takes off varies from run to run (training/REPORT.md); without this line a long run would
    # show it only in its final figure, an hour later.
    if _taken_off(stage, top1):
        return
    reached = "without a validation top-1" if top1 is None else f"at {top1:.1%} validation top-1"
    then = ("running it again with another seed" if retrying else
            "the next stage starts from its best attempt all the same, and the final top-1 may be lower")
    log.warning("warm-up %r ended %s, short of its target %.0f%% (chance is %.0f%%): it may not have taken off; %s",
                stage.name, reached, 100 * stage.target, 100 / len(stage.classes), then)


def _refine(recipe: Recipe, workdir: Path, run_dir: Path, shift: bool, procs: int, start: Path,
            overrides: list[str]) -> tuple[Path, int]:
    """The recipe's refine stage on the main stage's frames (extracted again if the stage takes another size),
    from ``start`` (the main stage's checkpoint) into ``run_dir/refine``; returns the checkpoint to evaluate and
    export, and the stage's epochs (0 without one)."""
    from training.parallel import train_data_parallel

    if recipe.refine is None:
        return start, 0
    keys = [f"model.pretrained={start}", *recipe.refine_keys(), *overrides]
    frames = _frames(workdir, recipe, keys)
    cfg = _stage_config(workdir / "data", frames, run_dir / "refine", shift, procs, keys)
    result = train_data_parallel(cfg, procs)
    return result.best_checkpoint or result.latest_checkpoint, cfg.train.epochs


def run_demo(repo: Path, workdir: Path, shift: bool = True, overrides: list[str] | None = None,
             procs: int | None = None, recipe: Recipe = QUICK) -> dict[str, object]:
    """Generate (or reuse) ``recipe``'s warm-up sets and the synthetic set, run the warm-up stages, train the
    demo config from the last one's backbone on ``procs`` processes (then the recipe's refine stage, if any),
    evaluate on the held-out validation and test videos, export; returns a summary. ``overrides`` apply to every
    stage. ``procs`` defaults to one a CPU core, at most 2 (a 2-core machine trains about twice as fast as with
    one), or 1 on a GPU."""
    from training.parallel import default_procs, train_data_parallel
    from training.workflows import evaluate_checkpoint, export_checkpoint

    overrides = overrides or []
    procs = procs or default_procs()
    if BATCH % procs:
        raise ValueError(f"--procs must divide the global batch of {BATCH} clips, got {procs}")
    started = time.perf_counter()
    run_dir = workdir / ("tsm" if shift else "tsn")
    # Evaluation decodes the held-out videos in this one process: two loader workers use both cores. The exported
    # model, and so its reported figures, look at three crops along the long side: the synthetic objects stay in the
    # centre square that one crop keeps, an uploaded clip's action need not (training/REPORT.md, ffmpeg's clips).
    eval_keys = ["data.num_workers=2", "data.spatial_crops=3", *recipe.exported_shape_keys(), *overrides]
    video_cfg = _video_config(workdir / "data", run_dir, shift, eval_keys)
    _generate(workdir, recipe)
    frames = _frames(workdir, recipe, [*recipe.overrides, *overrides])
    generated = time.perf_counter()
    warm_best, warm_top1, warm_attempts = _warm_ups(recipe, workdir, run_dir, shift, procs, overrides)
    warmed = time.perf_counter()
    # The main set is seen every epoch: its frames are extracted once instead of decoded each time.
    start = [f"model.pretrained={warm_best}"] if warm_best else []  # a recipe without warm-ups starts from scratch
    cfg = _stage_config(workdir / "data", frames, run_dir, shift, procs, [*start, *recipe.overrides, *overrides])
    result = train_data_parallel(cfg, procs)
    best = result.best_checkpoint or result.latest_checkpoint
    trained = time.perf_counter()
    best, refine_epochs = _refine(recipe, workdir, run_dir, shift, procs, best, overrides)
    finished = time.perf_counter()
    # Reported on videos, decoded and preprocessed as the service does: the validation clips, which chose the
    # checkpoint, and the test clips, which nothing has seen.
    evaluation = evaluate_checkpoint(video_cfg, best, out_dir=run_dir)
    test_cfg = _video_config(workdir / "test", run_dir / "test", shift, eval_keys)
    test = evaluate_checkpoint(test_cfg, best, out_dir=run_dir / "test")
    metrics = {**evaluation.as_dict(), **test.as_dict(prefix="test_")}
    folder = export_checkpoint(video_cfg, best, repo, metrics=metrics)
    summary: dict[str, object] = {
        "model": cfg.name, "recipe": recipe.name, "shift": shift, "published": str(folder), "val_top1": evaluation.top1,
        "val_top5": evaluation.top5, "val_clips": evaluation.count, "val_list": video_cfg.data.valid_list,
        "test_top1": test.top1, "test_top5": test.top5, "test_clips": test.count, "test_list": test_cfg.data.valid_list,
        "epochs": cfg.train.epochs, "processes": procs, "mixed_clips": recipe.mix_clips,
        "num_seg": video_cfg.model.num_seg, "refine_epochs": refine_epochs,
        "warmup_val_top1": warm_top1, "warmup_attempts": warm_attempts,
        "seconds_data": round(generated - started, 1), "seconds_warmup": round(warmed - generated, 1),
        "seconds_train": round(trained - warmed, 1), "seconds_refine": round(finished - trained, 1),
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    (run_dir / "summary.json").write_text(to_json(summary, indent=2) + "\n")
    log.info("demo done: %s", summary)
    return summary


def published_models(repo: Path) -> list[Manifest]:
    """Manifests of every readable published version in ``repo``."""
    found: list[Manifest] = []
    for name, versions in scan_repository(repo).items():
        for version in versions:
            try:
                found.append(Manifest.read(repo / name / str(version)))
            except (OSError, ValueError) as exc:
                log.warning("ignoring %s/%s/%d: %s", repo, name, version, exc)
    return found


def ensure_model(repo: Path, workdir: Path = Path("runs/demo")) -> None:
    """Build the demo model only when ``repo`` has no usable model (a second start is instant)."""
    present = published_models(repo)
    if present:
        names = ", ".join(sorted({f"{m.name} v{m.version}" for m in present}))
        print(f"{repo} already holds {names}; not rebuilding")
        return
    print(f"{repo} holds no model: building the demo model (synthetic data, training, export)...")
    run_demo(repo, workdir)
