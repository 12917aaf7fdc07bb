"""Recognizer2D: the whole TSM network from a clip batch to logits."""

from __future__ import annotations

import paddle
from paddle import nn

from training.tsm.backbone import ResNetTSM
from training.tsm.head import TSMHead
from training.tsm.shift import DataFormat


class Recognizer2D(nn.Layer):
    """float32 [N, T, 3, H, W] (normalised RGB) -> logits [N, K]; keys ``backbone.*``, ``head.*``."""

    def __init__(self, backbone: ResNetTSM, head: TSMHead, num_seg: int, data_format: DataFormat) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.num_seg, self.data_format = num_seg, data_format
        self.arch: dict[str, object] = {}  # build_tsm's arguments, so the network can be rebuilt

    def forward(self, clips: paddle.Tensor) -> paddle.Tensor:
        height, width = clips.shape[-2], clips.shape[-1]
        frames = paddle.reshape(clips, [-1, 3, height, width])  # [N*T, 3, H, W], row n*T+t
        if self.data_format == "NHWC":
            frames = paddle.transpose(frames, [0, 2, 3, 1])
        return self.head(self.backbone(frames), self.num_seg)
