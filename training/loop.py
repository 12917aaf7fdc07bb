"""The training job: epochs of SGD with validation, best/latest checkpoints, JSONL log and curves."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
import paddle.distributed as dist

from training.checkpoint import (
    build_model,
    labels_of,
    load_state_file,
    load_weights,
    read_meta,
    save_checkpoint,
    to_json,
)
from training.config import Config
from training.data import ClipDataset, make_loader, require_some_present, unread_list_hint
from training.epoch import log_line, summed, train_epoch, train_figures
from training.evaluate import EvalResult, evaluate, merge_ranks, share_rank0_statistics
from training.interrupts import Progress, loader_death
from training.optim import AmpPlan, amp_plan, make_optimizer, make_scaler
from training.plots import plot_curves
from training.run_dir import (
    BEST,
    LATEST,
    LOG_FILE,
    RESULT_FILE,
    in_run_folder,
    require_writable,
    set_aside_abandoned_epochs,
    set_aside_earlier_run,
    trim_log,
)
from training.tsm.shift import ShiftImpl

log = logging.getLogger(__name__)


def training_shift(num_seg: int) -> ShiftImpl:
    """The shift training runs: Paddle's fused op, whose backward copies the gradient once, where the slices'
    backward zero-fills an input-sized tensor for each of the five slices of every block (19 % of a CPU step).
    Values are the same bit for bit both ways, so a run trains exactly the same weights, only faster. Export keeps
    the slices, which Paddle Inference's oneDNN passes run faster. The op refuses a shift ratio (1/num_seg) of
    0.5 or more, so one or two segments keep the slices."""
    return "fused" if num_seg > 2 else "slice"


@dataclass
class TrainResult:
    output_dir: Path
    best_checkpoint: Path | None
    latest_checkpoint: Path
    best_metrics: dict[str, float]
    history: list[dict[str, float]]

    def write(self, path: Path) -> None:
        """Save as JSON, so the process that started a data-parallel run can read what it produced."""
        fields = {"best_checkpoint": str(self.best_checkpoint) if self.best_checkpoint else None,
                  "latest_checkpoint": str(self.latest_checkpoint), "best_metrics": self.best_metrics,
                  "history": self.history}
        path.write_text(to_json(fields, indent=1) + "\n")

    @classmethod
    def read(cls, path: Path) -> TrainResult:
        fields = json.loads(path.read_text())
        best = fields["best_checkpoint"]
        return cls(path.parent, Path(best) if best else None, Path(fields["latest_checkpoint"]),
                   fields["best_metrics"], fields["history"])


def train(cfg: Config, validate: bool = True, resume: Path | None = None) -> TrainResult:
    """Train ``cfg``; with ``validate`` keep the best checkpoint by validation top-1.

    Runs data-parallel when started by ``paddle.distributed.launch`` (world size > 1).

    A resumed run continues in its checkpoint's folder (the run it belongs to), whatever
    ``train.output_dir`` says (an INFO line says so when they differ): writing elsewhere mixed two runs'
    logs and checkpoints. Resuming from an older ``epoch_N`` of a run that went further abandons the later
    epochs: their checkpoints (``epoch_M``, ``latest`` and ``best`` from epochs after N) move, with the
    run's whole log, into ``earlier_run.<n>/`` as a fresh run's predecessor does; the folder keeps epochs up to
    N, the log trimmed to them, and the best checkpoint only if it is from one of them (else the resumed run's
    first validated epoch becomes the best).

    Ctrl+C or a :class:`Terminated` raises :class:`TrainingInterrupted` naming the last saved checkpoint.
    """
    # Optimizer state is keyed by generated names (``conv2d_0.w_0_velocity_0``): a fresh naming
    # scope per run makes a resumed run generate the names its checkpoint holds.
    with paddle.utils.unique_name.guard():
        return _train(cfg, validate, resume)


@dataclass
class _Run:
    """What one training run holds: the network (and its data-parallel wrapper) and its optimiser."""

    model: paddle.nn.Layer
    net: paddle.nn.Layer
    optimizer: paddle.optimizer.Optimizer
    schedule: paddle.optimizer.lr.PiecewiseDecay
    plan: AmpPlan
    scaler: paddle.amp.GradScaler | None
    start_epoch: int


def _prepare(cfg: Config, resume: Path | None, distributed: bool) -> _Run:
    """Build the network, load pretrained or resumed weights, the optimiser and the AMP plan."""
    paddle.seed(cfg.train.seed + dist.get_rank())
    model = build_model(cfg, shift_impl=training_shift(cfg.model.num_seg))
    if cfg.model.pretrained and resume is None:
        loaded, _ = load_weights(model, Path(cfg.model.pretrained), backbone_only=True)
        log.info("initialised %d backbone tensors from %s", loaded, cfg.model.pretrained)
    optimizer, schedule = make_optimizer(cfg, model)
    start_epoch = 0
    if resume is not None:
        load_weights(model, resume)
        if resume.with_suffix(".pdopt").exists():
            optimizer.set_state_dict(load_state_file(resume.with_suffix(".pdopt")))
        else:  # best/epoch_N checkpoints hold weights only: say so, the first steps differ from a true resume
            log.warning("%s has no optimiser state (%s): the optimiser starts afresh; resume from latest.pdparams "
                        "to continue exactly", resume, resume.with_suffix(".pdopt").name)
        start_epoch = int(read_meta(resume).get("epoch", 0))
        schedule.last_epoch = start_epoch - 1
        schedule.step()
        log.info("resumed from %s at epoch %d", resume, start_epoch)
    plan = amp_plan(cfg)
    if plan.enabled and plan.level == "O2":
        model, optimizer = paddle.amp.decorate(models=model, optimizers=optimizer, level="O2", master_weight=True)
    net = paddle.DataParallel(model) if distributed else model
    return _Run(model, net, optimizer, schedule, plan, make_scaler(plan), start_epoch)


def _check_inputs(cfg: Config, validate: bool, resume: Path | None) -> None:
    """What would otherwise fail hours later (a wrong label list at export) or do nothing silently."""
    labels_of(cfg)
    if cfg.train.stop_at_val_top1 > 0 and not (validate and cfg.data.valid_list):
        log.warning("train.stop_at_val_top1=%g needs validation (--validate and data.valid_list): it is ignored",
                    cfg.train.stop_at_val_top1)
    if resume is None:
        return
    if not resume.is_file():
        raise ValueError(f"--resume {resume}: not a checkpoint file (give e.g. {resume / 'latest.pdparams'})"
                         if resume.is_dir() else f"--resume {resume}: no such file")
    done = int(read_meta(resume).get("epoch", 0))
    if done >= cfg.train.epochs:
        raise ValueError(f"{resume} is already at epoch {done} and train.epochs is {cfg.train.epochs}: nothing "
                         f"to train (raise it, e.g. -o train.epochs={done + 10})")


def _train(cfg: Config, validate: bool, resume: Path | None) -> TrainResult:
    _check_inputs(cfg, validate, resume)
    cfg = in_run_folder(cfg, resume)
    progress = Progress(resume, int(read_meta(resume).get("epoch", 0)) if resume else 0)
    try:
        return _run(cfg, validate, resume, progress)
    except KeyboardInterrupt as exc:
        raise progress.interrupted(exc) from exc
    except SystemError as exc:
        if (reason := loader_death(exc)) is None:
            raise
        raise progress.loader_died(reason) from exc


def _run(cfg: Config, validate: bool, resume: Path | None, progress: Progress) -> TrainResult:
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if dist.get_rank() == 0:
        require_writable(out)
    distributed = dist.get_world_size() > 1
    if distributed:
        dist.init_parallel_env()
    run = _prepare(cfg, resume, distributed)
    train_set, train_loader, val_loader = _loaders(cfg, validate, distributed)
    log.info("rank %d of %d: %d training clips, %d steps per epoch", dist.get_rank(), dist.get_world_size(),
             len(train_set), len(train_loader))
    log_file = out / LOG_FILE
    if dist.get_rank() == 0:  # after _prepare: every rank has loaded its weights (DataParallel synchronised them)
        if resume is None:
            set_aside_earlier_run(out)
        else:
            set_aside_abandoned_epochs(out, run.start_epoch)
            trim_log(log_file, run.start_epoch)
        if log_file.exists():
            plot_curves(log_file, out / "curves.png")  # the resumed history, until its next epoch is drawn
        # Rank 0's alone, after the set-aside: another rank's copy could land first and be moved away as an
        # earlier run's (seen in a fresh demo folder).
        (out / "config.json").write_text(cfg.model_dump_json(indent=2) + "\n")
    latest = progress.latest = out / f"{LATEST}.pdparams"  # every rank's: any of them may be the one a failure stops
    history: list[dict[str, float]] = []
    # A resumed run competes with the best checkpoint it already has, not with nothing.
    kept = out / f"{BEST}.pdparams"
    best_path: Path | None = kept if resume is not None and kept.exists() else None
    best: dict[str, float] = read_meta(best_path).get("metrics", {}) if best_path else {}
    for epoch in range(run.start_epoch, cfg.train.epochs):
        train_set.epoch = epoch
        np.random.seed([cfg.train.seed, epoch])  # the single-process BatchSampler shuffles with numpy's global RNG
        if isinstance(train_loader.batch_sampler, paddle.io.DistributedBatchSampler):
            train_loader.batch_sampler.set_epoch(epoch)  # its own shuffle: a resumed run continues the sequence
        started = time.perf_counter()
        record: dict[str, float] = {"epoch": epoch + 1, "lr": run.optimizer.get_lr()}
        sums = train_epoch(run.net, train_loader, run.optimizer, run.plan, run.scaler, cfg, epoch, log_file)
        record |= train_figures(sums, distributed)
        run.schedule.step()
        record["seconds"] = time.perf_counter() - started
        if val_loader is not None:
            if distributed:
                share_rank0_statistics(run.model)
            result: EvalResult = evaluate(run.model, val_loader, cfg.model.num_classes, desc="validate")
            record |= (merge_ranks(result) if distributed else result).as_dict()
            record["val_skipped"] = int(summed([len(result.skipped)], distributed)[0])
            if record["val_count"] == 0:  # the epoch's training is kept: fix the list, then resume
                trained = {k: v for k, v in record.items() if not k.startswith("val_") or k == "val_skipped"}
                saved = _end_epoch(out, run, cfg, epoch, trained) if dist.get_rank() == 0 else latest
                if distributed:  # a rank raising first would have the run killed while rank 0 saves
                    dist.barrier()
                raise ValueError(f"no clip of {cfg.data.valid_list} could be read: {unread_list_hint(cfg)}; epoch "
                                 f"{epoch + 1}'s training is saved in {saved}: resume with --resume {saved}")
        history.append(record)
        stop = _reached_target(cfg, record, distributed)
        if dist.get_rank() != 0:
            if stop:
                break
            continue
        latest = _end_epoch(out, run, cfg, epoch, record)
        progress.saved, progress.saved_epoch = latest, epoch + 1
        if improves_on(record, best):
            best, best_path = record, save_checkpoint(out / BEST, run.model, cfg, epoch + 1, record)
        plot_curves(log_file, out / "curves.png")
        if stop:
            log.info("validation top-1 %.4g reached %.4g: stopping after epoch %d", record["val_top1"],
                     cfg.train.stop_at_val_top1, epoch + 1)
            break
    outcome = TrainResult(out, best_path, latest, best, history)
    if dist.get_rank() == 0:
        outcome.write(out / RESULT_FILE)
    return outcome


def _loaders(cfg: Config, validate: bool, distributed: bool
             ) -> tuple[ClipDataset, paddle.io.DataLoader, paddle.io.DataLoader | None]:
    """The training set and loader, and the validation loader (None without ``validate``)."""
    train_set = ClipDataset(cfg, cfg.data.train_list, train=True)
    require_some_present(train_set, cfg.data.train_list, cfg)
    train_loader = make_loader(train_set, cfg.data.batch_size, cfg.data.num_workers, True, distributed)
    if not (validate and cfg.data.valid_list):
        return train_set, train_loader, None
    val_set = ClipDataset(cfg, cfg.data.valid_list, train=False)
    require_some_present(val_set, cfg.data.valid_list, cfg)
    # Data-parallel ranks each validate every world_size-th clip; the counts are summed (merge_ranks).
    shard = val_set if not distributed else paddle.io.Subset(
        val_set, list(range(dist.get_rank(), len(val_set), dist.get_world_size())))
    return train_set, train_loader, make_loader(shard, cfg.data.test_batch_size, cfg.data.num_workers, False)


def _end_epoch(out: Path, run: _Run, cfg: Config, epoch: int, record: dict[str, float]) -> Path:
    """Rank 0 after an epoch: its log line, ``latest`` (and ``epoch_N`` every save_interval); returns latest."""
    log_line(out / LOG_FILE, {"kind": "epoch", **record})
    log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4g}" for k, v in record.items()))
    latest = save_checkpoint(out / LATEST, run.model, cfg, epoch + 1, record, run.optimizer)
    if (epoch + 1) % cfg.train.save_interval == 0:
        save_checkpoint(out / f"epoch_{epoch + 1}", run.model, cfg, epoch + 1, record)
    return latest


def improves_on(record: dict[str, float], best: dict[str, float]) -> bool:
    """Whether an epoch's validation beats the best so far: a higher top-1, or the same top-1 with a lower loss.

    On 160 clips equal top-1s are common; PaddleVideo keeps the first of them, we keep the surer one (a loss
    that is missing or not finite, a diverged epoch's, never wins a tie).
    """
    if "val_top1" not in record:
        return False
    top1, best_top1 = record["val_top1"], best.get("val_top1", -1.0)
    if top1 != best_top1:
        return top1 > best_top1

    def loss(r: dict[str, float]) -> float:
        value = r.get("val_loss")
        return value if value is not None and math.isfinite(value) else math.inf
    return loss(record) < loss(best)


def _reached_target(cfg: Config, record: dict[str, float], distributed: bool) -> bool:
    """Whether the validation reached ``train.stop_at_val_top1``; every rank gets rank 0's answer (the merged
    figures are the same on every rank, but a decision that must agree is never left to float comparisons)."""
    stop = 0 < cfg.train.stop_at_val_top1 <= record.get("val_top1", -1.0)
    if distributed and cfg.train.stop_at_val_top1 > 0:
        flag = paddle.to_tensor([int(stop)], dtype="int32")
        dist.broadcast(flag, src=0)
        stop = bool(flag.item())
    return stop
