"""One training epoch on this rank's share of the clips, and its figures summed over the data-parallel ranks."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import paddle
import paddle.distributed as dist
from tqdm import tqdm

from training.checkpoint import to_json
from training.config import Config
from training.data import unread_list_hint
from training.optim import AmpPlan

log = logging.getLogger(__name__)


def log_line(path: Path, record: dict[str, float | str]) -> None:
    with path.open("a") as fh:
        fh.write(to_json(record) + "\n")


def _autocast(plan: AmpPlan) -> contextlib.AbstractContextManager[object]:
    if not plan.enabled:
        return contextlib.nullcontext()
    return paddle.amp.auto_cast(custom_black_list=set(plan.custom_black_list), level=plan.level)


def train_epoch(model: paddle.nn.Layer, loader: paddle.io.DataLoader, optimizer: paddle.optimizer.Optimizer,
                plan: AmpPlan, scaler: paddle.amp.GradScaler | None, cfg: Config, epoch: int,
                log_file: Path) -> dict[str, float]:
    """One epoch on this rank's share; returns its sums (loss over steps, hits, clips seen, clips skipped)."""
    model.train()
    losses: list[float] = []
    hits = seen = skipped = 0
    steps = len(loader) if cfg.train.max_steps_per_epoch == 0 else min(len(loader), cfg.train.max_steps_per_epoch)
    bar = tqdm(loader, total=steps, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", dynamic_ncols=True,
               disable=dist.get_rank() != 0)
    for step, batch in enumerate(bar):
        if step >= steps:
            break
        for item in batch["skipped"]:
            log.warning("skipped undecodable clip %s", item)
        skipped += len(batch["skipped"])
        if batch["labels"].shape[0] == 0:
            continue
        with _autocast(plan):
            logits = model(batch["clips"])  # [N, K]
            loss = paddle.nn.functional.cross_entropy(logits, batch["labels"])
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.minimize(optimizer, loss)
        else:
            loss.backward()
            optimizer.step()
        optimizer.clear_grad()
        losses.append(float(loss))
        hits += int((logits.argmax(axis=1).numpy() == batch["labels"].numpy()[:, 0]).sum())
        seen += int(batch["labels"].shape[0])
        bar.set_postfix(loss=f"{losses[-1]:.3f}", top1=f"{hits / max(seen, 1):.3f}")
        if dist.get_rank() == 0:
            log_line(log_file, {"kind": "step", "epoch": epoch + 1, "step": step, "loss": losses[-1],
                                "lr": optimizer.get_lr()})
    if seen == 0:  # training on nothing would "succeed" with a NaN loss and random weights
        raise ValueError(f"epoch {epoch + 1}: no clip of {cfg.data.train_list} could be read ({skipped} skipped): "
                         f"{unread_list_hint(cfg)}")
    return {"loss_sum": float(np.sum(losses)), "steps": len(losses), "hits": hits, "seen": seen,
            "skipped": skipped}


def train_figures(sums: dict[str, float], distributed: bool) -> dict[str, float]:
    """The epoch's training figures over every rank's share (rank 0's alone showed half of a two-process run)."""
    loss_sum, steps, hits, seen, skipped = summed(
        [sums["loss_sum"], sums["steps"], sums["hits"], sums["seen"], sums["skipped"]], distributed)
    return {"train_loss": loss_sum / steps, "train_top1": hits / seen, "train_skipped": int(skipped)}


def summed(values: list[float], distributed: bool) -> list[float]:
    """``values`` summed over the data-parallel ranks (each saw its own share of the clips); every rank calls it."""
    if not distributed:
        return values
    total = paddle.to_tensor(values, dtype="float64")
    dist.all_reduce(total)
    return [float(v) for v in total.numpy()]
