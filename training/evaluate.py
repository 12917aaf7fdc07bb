"""Evaluation: top-1/top-5, loss and the confusion matrix over a list, with the test pipeline."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paddle
from tqdm import tqdm

log = logging.getLogger(__name__)

EVALUATION_FILE = "evaluation.json"  # what an evaluation writes beside its confusion matrix

Scorer = Callable[[np.ndarray], np.ndarray]  # float32 clips [N, T, 3, H, W] -> logits [N, K]


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


def evaluate(model: paddle.nn.Layer, loader: paddle.io.DataLoader, num_classes: int,
             desc: str = "evaluate") -> EvalResult:
    """Run ``model`` in eval mode over ``loader`` (batches from ``training.data.collate_clips``)."""
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            return score_loader(lambda clips: model(paddle.to_tensor(clips)).numpy(), loader, num_classes, desc)
    finally:
        if was_training:
            model.train()


def score_loader(score: Scorer, loader: paddle.io.DataLoader, num_classes: int,
                 desc: str = "evaluate") -> EvalResult:
    """Top-1/top-5, loss and confusion of ``score``'s logits over ``loader``: a network in training, or a
    published model's predictor (``training.published``)."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    hits5 = count = 0
    loss_sum = 0.0
    skipped: list[str] = []
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        skipped += batch["skipped"]
        for item in batch["skipped"]:
            log.warning("skipped undecodable clip %s", item)
        truth = _numpy(batch["labels"]).reshape(-1)
        if truth.shape[0] == 0:
            continue
        scores = np.asarray(score(_numpy(batch["clips"]).astype(np.float32)), dtype=np.float64)  # [N, K]
        loss_sum += float(_cross_entropy_sum(scores, truth))
        top = np.argsort(-scores, axis=1)[:, :5]
        hits5 += int((top == truth[:, None]).any(axis=1).sum())
        np.add.at(confusion, (truth, top[:, 0]), 1)
        count += len(truth)
    denom = max(count, 1)
    return EvalResult(float(np.trace(confusion)) / denom, hits5 / denom, loss_sum / denom, count, confusion,
                      skipped)


def _numpy(value: object) -> np.ndarray:
    """A loader field as numpy: the DataLoader hands collate's arrays over as tensors."""
    return value.numpy() if isinstance(value, paddle.Tensor) else np.asarray(value)


def _cross_entropy_sum(logits: np.ndarray, truth: np.ndarray) -> float:
    """Summed softmax cross-entropy of float64 logits [N, K] against class ids [N] (max-shifted, so no overflow)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(truth)), truth].sum())


def write_evaluation(result: EvalResult, out: Path, labels: list[str], title: str, what: dict[str, object]) -> None:
    """``confusion_matrix.png`` (titled ``title``) and ``evaluation.json`` into ``out``: ``what`` was evaluated, the
    figures (for scripts that gate on them), the labels and the confusion matrix; sets ``result.confusion_png``."""
    from training.checkpoint import to_json
    from training.plots import plot_confusion

    out.mkdir(parents=True, exist_ok=True)
    result.confusion_png = out / "confusion_matrix.png"
    plot_confusion(result.confusion, labels, result.confusion_png,
                   title=f"{title}: top-1 {result.top1:.3f} on {result.count} clips")
    figures = {**what, **result.as_dict(prefix=""), "count": result.count, "skipped": result.skipped,
               "labels": labels, "confusion": result.confusion.tolist()}
    (out / EVALUATION_FILE).write_text(to_json(figures, indent=1) + "\n")


def share_rank0_statistics(model: paddle.nn.Layer) -> None:
    """Give every data-parallel rank rank 0's BatchNorm running statistics, before they validate their shards.

    DataParallel averages the gradients only: each rank's running means and variances follow its own batches, so
    a rank validated its shard with a network no checkpoint holds (rank 0's is the one saved). Measured on the
    tiny set: a validation loss of 5.36 recorded for a checkpoint whose own is 5.05. Training is unchanged: it
    normalises with each batch's statistics."""
    import paddle.distributed as dist

    for value in model.parameters():
        if value.stop_gradient:  # the running statistics: parameters that no optimiser updates
            dist.broadcast(value, src=0)


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
