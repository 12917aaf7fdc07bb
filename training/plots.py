"""PNG pictures of a run: loss/accuracy curves and the confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: training runs on servers and in CI
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator


def read_jsonl(path: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_curves(metrics_log: Path, out: Path) -> Path:
    """Per-epoch train loss/top-1 and validation loss/top-1 from the JSONL log -> PNG."""
    epochs = [r for r in read_jsonl(metrics_log) if r.get("kind") == "epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax, label in [("train_loss", ax_loss, "train"), ("val_loss", ax_loss, "validation"),
                           ("train_top1", ax_acc, "train"), ("val_top1", ax_acc, "validation")]:
        points = [(r["epoch"], r[key]) for r in epochs if r.get(key) is not None]  # null: a diverged (NaN) value
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax_loss.set(title="loss", xlabel="epoch")
    ax_acc.set(title="top-1 accuracy", xlabel="epoch", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
        else:  # every value diverged (NaN) or none was logged: say so instead of an empty frame
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_confusion(confusion: np.ndarray, labels: list[str], out: Path, title: str = "confusion matrix") -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted) -> PNG."""
    rows = confusion.sum(axis=1, keepdims=True).clip(min=1)
    norm = confusion / rows
    size = max(5.0, 0.45 * len(labels) + 2) if len(labels) <= 40 else 12.0
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if len(labels) <= 40:
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        for (i, j), count in np.ndenumerate(confusion):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
