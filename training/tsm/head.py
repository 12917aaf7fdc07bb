"""TSMHead: per-frame classifier whose logits are averaged over the segments."""

from __future__ import annotations

import paddle
from paddle import nn
from paddle.nn.initializer import Constant, Normal
from paddle.regularizer import L2Decay

from training.tsm.shift import DataFormat


class TSMHead(nn.Layer):
    """features [N*T, C, h, w] -> logits [N, K] (no softmax), as PaddleVideo's TSMHead.

    fc weight: lr x5, L2 ``fc_weight_decay``, init Normal(0, std); bias: lr x10, no decay, 0.
    """

    def __init__(self, num_classes: int, in_channels: int = 2048, drop_ratio: float = 0.5,
                 std: float = 0.001, data_format: DataFormat = "NCHW", fc_weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        self.avgpool2d = nn.AdaptiveAvgPool2D(1, data_format=data_format)
        self.dropout = nn.Dropout(p=drop_ratio) if drop_ratio > 0 else None
        self.fc = nn.Linear(
            in_channels, num_classes,
            weight_attr=paddle.ParamAttr(initializer=Normal(0.0, std), learning_rate=5.0,
                                         regularizer=L2Decay(fc_weight_decay)),
            bias_attr=paddle.ParamAttr(initializer=Constant(0.0), learning_rate=10.0, regularizer=L2Decay(0.0)),
        )

    def forward(self, x: paddle.Tensor, num_seg: int) -> paddle.Tensor:
        x = self.avgpool2d(x)  # [N*T, C, 1, 1] or [N*T, 1, 1, C]
        if self.dropout is not None:
            x = self.dropout(x)
        scores = self.fc(paddle.reshape(x, [-1, self.in_channels]))  # [N*T, K]
        scores = paddle.reshape(scores, [-1, num_seg, self.num_classes])
        return paddle.mean(scores, axis=1)  # [N, K]
