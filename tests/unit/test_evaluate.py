"""score_loader's figures on hand-made logits: the confusion matrix's rows are the truth, columns the prediction."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate import score_loader


def test_figures_and_the_confusion_matrix_from_known_logits() -> None:
    logits = {0: [0.1, 0.9, 0.0], 1: [0.2, 0.7, 0.1], 2: [0.0, 0.3, 0.7]}  # by clip value: 0 and 1 say class 1
    batches = [{"clips": np.array([[0.0], [1.0]], np.float32), "labels": np.array([0, 0]), "skipped": []},
               {"clips": np.array([[2.0]], np.float32), "labels": np.array([2]), "skipped": ["bad.mp4: unreadable"]}]

    def score(clips: np.ndarray) -> np.ndarray:
        return np.array([logits[int(c[0])] for c in clips])

    result = score_loader(score, batches, 3)  # type: ignore[arg-type]
    np.testing.assert_array_equal(result.confusion, [[0, 2, 0], [0, 0, 0], [0, 0, 1]])  # truth 0 called 1 twice
    assert (result.top1, result.count, result.skipped) == (pytest.approx(1 / 3), 3, ["bad.mp4: unreadable"])
    assert result.top5 == 1.0
    expected = -np.mean([np.log(np.exp(logits[i][t]) / np.exp(logits[i]).sum()) for i, t in ((0, 0), (1, 0), (2, 2))])
    assert result.loss == pytest.approx(expected)
