"""Evaluation: top-1/top-5, loss and the confusion matrix over a list, with the test pipeline."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paddle
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    count: int
    confusion: np.ndarray
    skipped: list[str] = field(default_factory=list)
    confusion_png: Path | None = None  # where evaluate_checkpoint drew the confusion matrix

    def as_dict(self, prefix: str = "val_") -> dict[str, float]:
        return {f"{prefix}top1": self.top1, f"{prefix}top5": self.top5, f"{prefix}loss": self.loss,
                f"{prefix}count": float(self.count)}


@paddle.no_grad()
def evaluate(model: paddle.nn.Layer, loader: paddle.io.DataLoader, num_classes: int,
             desc: str = "evaluate") -> EvalResult:
    """Run ``model`` in eval mode over ``loader`` (batches from ``training.data.collate_clips``)."""
    was_training = model.training
    model.eval()
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    hits1 = hits5 = count = 0
    loss_sum = 0.0
    skipped: list[str] = []
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        skipped += batch["skipped"]
        for item in batch["skipped"]:
            log.warning("skipped undecodable clip %s", item)
        if batch["labels"].shape[0] == 0:
            continue
        logits = model(batch["clips"])  # [N, K]
        labels = batch["labels"]  # [N, 1] int64
        loss_sum += float(paddle.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        scores = logits.numpy()
        truth = labels.numpy()[:, 0]
        top = np.argsort(-scores, axis=1)[:, :5]
        hits1 += int((top[:, 0] == truth).sum())
        hits5 += int((top == truth[:, None]).any(axis=1).sum())
        np.add.at(confusion, (truth, top[:, 0]), 1)
        count += len(truth)
    if was_training:
        model.train()
    denom = max(count, 1)
    return EvalResult(hits1 / denom, hits5 / denom, loss_sum / denom, count, confusion, skipped)


def merge_ranks(result: EvalResult) -> EvalResult:
    """Every data-parallel rank evaluated its own shard: the sum over all of them, on every rank."""
    import paddle.distributed as dist

    k = result.confusion.shape[0]
    own = [round(result.top5 * result.count), result.loss * result.count, result.count]
    total = paddle.to_tensor(np.concatenate([result.confusion.ravel(), own]).astype(np.float64))
    dist.all_reduce(total)
    merged = total.numpy()
    confusion = merged[: k * k].reshape(k, k).round().astype(np.int64)
    hits5, loss_sum, count = merged[k * k :]
    denom = max(count, 1.0)
    return EvalResult(float(np.trace(confusion) / denom), float(hits5 / denom), float(loss_sum / denom),
                      int(np.rint(count)), confusion, result.skipped)
