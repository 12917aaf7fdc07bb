"""THE TSM network, defined once, with PaddleVideo's state-dict names."""

from __future__ import annotations

import paddle

from training.tsm.backbone import ResNetTSM
from training.tsm.head import TSMHead
from training.tsm.recognizer import Recognizer2D
from training.tsm.shift import DataFormat, ShiftImpl, temporal_shift

__all__ = ["Recognizer2D", "ResNetTSM", "TSMHead", "build_tsm", "temporal_shift"]


def build_tsm(depth: int = 50, num_classes: int = 400, num_seg: int = 8, shift: bool = True,
              data_format: DataFormat = "NCHW", base_width: int = 64, drop_ratio: float = 0.5,
              fc_weight_decay: float = 1e-4, shift_impl: ShiftImpl = "slice") -> Recognizer2D:
    """TSM-ResNet (shift=False gives TSN with the same layers): [N, T, 3, H, W] -> logits [N, K].

    ``shift_impl``: "slice" (reshape/slice/concat, fast under oneDNN) or "fused" (``F.temporal_shift``,
    as PaddleVideo exports it); the outputs are identical.
    """
    if data_format not in ("NCHW", "NHWC"):
        raise ValueError(f"data_format must be NCHW or NHWC, got {data_format!r}")
    # Fresh parameter names per build: optimizer state (.pdopt) is keyed by them, so a resumed
    # run must name its parameters exactly as the run that saved it did.
    with paddle.utils.unique_name.guard():
        backbone = ResNetTSM(depth, num_seg, shift, data_format, base_width, shift_impl)
        head = TSMHead(num_classes, backbone.out_channels, drop_ratio, 0.001, data_format, fc_weight_decay)
        model = Recognizer2D(backbone, head, num_seg, data_format)
    model.arch = {"depth": depth, "num_classes": num_classes, "num_seg": num_seg, "shift": shift,
                  "data_format": data_format, "base_width": base_width, "drop_ratio": drop_ratio,
                      "shift_impl": shift_impl}
    return model
