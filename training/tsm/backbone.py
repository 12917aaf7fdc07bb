"""ResNet-TSM backbones with PaddleVideo's layer names (so its weights load key for key)."""

from __future__ import annotations

import paddle
from paddle import nn
from paddle.nn.initializer import KaimingNormal
from paddle.regularizer import L2Decay

from training.tsm.shift import DataFormat, ShiftImpl, temporal_shift

STAGE_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


class ConvBNLayer(nn.Layer):
    """Conv2D (no bias, 'same' padding) -> BatchNorm2D -> optional ReLU; keys ``_conv``, ``_batch_norm``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, act: bool = True,
                 data_format: DataFormat = "NCHW") -> None:
        super().__init__()
        self._conv = nn.Conv2D(in_ch, out_ch, kernel, stride=stride, padding=(kernel - 1) // 2,
                               weight_attr=paddle.ParamAttr(initializer=KaimingNormal()),
                               bias_attr=False, data_format=data_format)
        no_decay = paddle.ParamAttr(regularizer=L2Decay(0.0))
        self._batch_norm = nn.BatchNorm2D(out_ch, momentum=0.9, epsilon=1e-5, weight_attr=no_decay,
                                          bias_attr=paddle.ParamAttr(regularizer=L2Decay(0.0)),
                                          data_format=data_format)
        self._act = nn.ReLU() if act else None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        y = self._batch_norm(self._conv(x))
        return self._act(y) if self._act is not None else y


class _ShiftBlock(nn.Layer):
    """Shared residual wiring: ``relu(short(x) + branch(shift(x)))``, the shift on the branch only."""

    def __init__(self, num_seg: int, shift: bool, data_format: DataFormat) -> None:
        super().__init__()
        self.num_seg, self.shift, self.data_format = num_seg, shift, data_format
        self.shift_impl: ShiftImpl = "slice"  # set by ResNetTSM for every block
        self.short: ConvBNLayer | None = None

    def _add_short(self, in_ch: int, out_ch: int, stride: int, shortcut: bool) -> None:
        """Registered after the branch convs so the state-dict order matches PaddleVideo's."""
        if not shortcut:
            self.short = ConvBNLayer(in_ch, out_ch, 1, stride, act=False, data_format=self.data_format)

    def branch(self, x: paddle.Tensor) -> paddle.Tensor:
        raise NotImplementedError

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        y = temporal_shift(x, self.num_seg, 1.0 / self.num_seg, self.data_format, self.shift_impl) if self.shift else x
        short = x if self.short is None else self.short(x)
        return nn.functional.relu(short + self.branch(y))


class BottleneckBlock(_ShiftBlock):
    """1x1 -> 3x3 (stride) -> 1x1 x4, as PaddleVideo's ResNetTSM bottleneck."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, shortcut: bool, num_seg: int,
                 shift: bool, data_format: DataFormat) -> None:
        super().__init__(num_seg, shift, data_format)
        self.conv0 = ConvBNLayer(in_ch, width, 1, data_format=data_format)
        self.conv1 = ConvBNLayer(width, width, 3, stride, data_format=data_format)
        self.conv2 = ConvBNLayer(width, width * 4, 1, act=False, data_format=data_format)
        self._add_short(in_ch, width * 4, stride, shortcut)

    def branch(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.conv2(self.conv1(self.conv0(x)))


class BasicBlock(_ShiftBlock):
    """3x3 (stride) -> 3x3, for depths 18/34, same naming scheme and shift placement."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, shortcut: bool, num_seg: int,
                 shift: bool, data_format: DataFormat) -> None:
        super().__init__(num_seg, shift, data_format)
        self.conv0 = ConvBNLayer(in_ch, width, 3, stride, data_format=data_format)
        self.conv1 = ConvBNLayer(width, width, 3, act=False, data_format=data_format)
        self._add_short(in_ch, width, stride, shortcut)

    def branch(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.conv1(self.conv0(x))


def block_name(depth: int, stage: int, index: int) -> str:
    """PaddleVideo's block names: res2a, res2b...; R101/152 stage 4 is res4a, res4b1, res4b2..."""
    if depth in (101, 152) and stage == 4:
        return "res4a" if index == 0 else f"res4b{index}"
    return f"res{stage}{chr(ord('a') + index)}"


class ResNetTSM(nn.Layer):
    """Backbone: float [N*T, 3, H, W] (or NHWC) -> features [N*T, C_out, H/32, W/32]."""

    def __init__(self, depth: int = 50, num_seg: int = 8, shift: bool = True,
                 data_format: DataFormat = "NCHW", base_width: int = 64, shift_impl: ShiftImpl = "slice") -> None:
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
        block_cls = BasicBlock if depth < 50 else BottleneckBlock
        self.conv = ConvBNLayer(3, base_width, 7, 2, data_format=data_format)
        self.pool2D_max = nn.MaxPool2D(3, stride=2, padding=1, data_format=data_format)
        self.blocks: list[nn.Layer] = []
        in_ch = base_width
        for stage, count in enumerate(STAGE_BLOCKS[depth]):
            width = base_width * 2**stage
            for i in range(count):
                stride = 2 if i == 0 and stage > 0 else 1
                block = block_cls(in_ch, width, stride, i > 0, num_seg, shift, data_format)
                block.shift_impl = shift_impl
                self.blocks.append(self.add_sublayer(block_name(depth, stage + 2, i), block))
                in_ch = width * block_cls.expansion
        self.out_channels = in_ch

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        y = self.pool2D_max(self.conv(x))
        for block in self.blocks:
            y = block(y)
        return y
