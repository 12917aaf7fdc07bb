"""Recognizer2D: the whole TSM network from a clip batch to logits."""

from __future__ import annotations

import paddle
from paddle import nn

from training.tsm.backbone import ResNetTSM
from training.tsm.head import TSMHead
from training.tsm.shift import DataFormat


class Recognizer2D(nn.Layer):
    """float32 [N, T, 3, H, W] (normalised RGB) -> logits [N, K]; keys ``backbone.*``, ``head.*``.

    T may be a multiple V of ``num_seg``: V views of one video (the test-time spatial crops, view after view),
    each run as a clip of its own, and the video's logits the mean of theirs, as the head averages segments.
    """

    def __init__(self, backbone: ResNetTSM, head: TSMHead, num_seg: int, data_format: DataFormat) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.num_seg, self.data_format = num_seg, data_format
        self.arch: dict[str, object] = {}  # build_tsm's arguments, so the network can be rebuilt

    def forward(self, clips: paddle.Tensor) -> paddle.Tensor:
        views, rest = divmod(clips.shape[1], self.num_seg)
        if rest or views < 1:
            raise ValueError(f"clips of {clips.shape[1]} frames are not views of {self.num_seg} segments")
        height, width = clips.shape[-2], clips.shape[-1]
        frames = paddle.reshape(clips, [-1, 3, height, width])  # [N*T, 3, H, W], row n*T+t
        if self.data_format == "NHWC":
            frames = paddle.transpose(frames, [0, 2, 3, 1])
        logits = self.head(self.backbone(frames), self.num_seg)  # [N*V, K]
        if views == 1:
            return logits
        return paddle.reshape(logits, [-1, views, logits.shape[-1]]).mean(axis=1)
