"""The network: PaddleVideo's state-dict names and shapes, layouts, head and the shift switch."""

from pathlib import Path

import numpy as np
import paddle
import pytest

from training.tsm import build_tsm

KEYS_FILE = Path(__file__).with_name("paddlevideo_tsm_r50_state_dict_keys.txt")


def _keys_and_shapes(model: paddle.nn.Layer) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


def test_resnet50_state_dict_equals_paddlevideo_list() -> None:
    expected = []
    for line in KEYS_FILE.read_text().splitlines():
        key, shape = line.split(" ", 1)
        expected.append((key, [int(s) for s in shape.strip("[]").split(",")]))
    assert len(expected) == 267
    assert _keys_and_shapes(build_tsm(50, num_classes=400)) == expected


def test_resnet101_names_stage4_like_paddlevideo() -> None:
    keys = build_tsm(101, num_classes=10).state_dict().keys()
    assert len(keys) == 522
    assert "backbone.res4b22.conv2._conv.weight" in keys
    assert "backbone.res4c.conv0._conv.weight" not in keys
    assert "backbone.res5c.conv2._batch_norm._variance" in keys


@pytest.mark.parametrize("depth", [18, 34])
def test_basic_block_depths_use_the_same_naming(depth: int) -> None:
    keys = build_tsm(depth, num_classes=5, base_width=8).state_dict().keys()
    assert "backbone.res2a.short._conv.weight" in keys
    assert "backbone.res5b.conv1._batch_norm._mean" in keys
    assert "backbone.res2a.conv2._conv.weight" not in keys  # basic blocks have two convs
    assert list(build_tsm(depth, num_classes=5, base_width=8).state_dict()["head.fc.weight"].shape) == [64, 5]


def test_head_init_and_output_shape() -> None:
    paddle.seed(0)
    model = build_tsm(50, num_classes=400)
    weight = model.head.fc.weight.numpy()
    assert weight.shape == (2048, 400)
    assert 0.0008 < weight.std() < 0.0012
    assert not model.head.fc.bias.numpy().any()
    model.eval()
    assert list(model(paddle.randn([2, 8, 3, 64, 64])).shape) == [2, 400]


def test_nhwc_equals_nchw_with_one_state_dict() -> None:
    nchw = build_tsm(18, num_classes=7, base_width=8)
    nhwc = build_tsm(18, num_classes=7, base_width=8, data_format="NHWC")
    nhwc.set_state_dict(nchw.state_dict())
    nchw.eval()
    nhwc.eval()
    x = paddle.randn([2, 8, 3, 64, 64])
    np.testing.assert_allclose(nchw(x).numpy(), nhwc(x).numpy(), rtol=1e-5, atol=1e-5)


def test_logits_are_the_mean_of_per_frame_logits() -> None:
    """Consensus averages per-frame logits: a clip of identical frames without shift = one frame's logits."""
    model = build_tsm(18, num_classes=4, num_seg=4, shift=False, base_width=8)
    model.eval()
    frame = paddle.randn([1, 1, 3, 32, 32])
    clip = paddle.tile(frame, [1, 4, 1, 1, 1])
    one = build_tsm(18, num_classes=4, num_seg=1, shift=False, base_width=8)
    one.set_state_dict(model.state_dict())
    one.eval()
    np.testing.assert_allclose(model(clip).numpy(), one(frame).numpy(), rtol=1e-5, atol=1e-6)


def test_a_clip_of_several_views_scores_the_mean_of_each_views_logits() -> None:
    """Test-time crops: [N, V*T] frames are V clips of T (view after view), each shifted on its own (no frame of
    one view reaches another's), and the video's logits their mean."""
    model = build_tsm(18, num_classes=5, num_seg=4, base_width=8)
    model.eval()
    views = [paddle.randn([2, 4, 3, 32, 32]) for _ in range(3)]
    each = np.stack([model(v).numpy() for v in views])  # [V, N, K]
    together = model(paddle.concat(views, axis=1)).numpy()  # [N, K]
    assert together.shape == (2, 5)
    np.testing.assert_allclose(together, each.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(together, each[1], atol=1e-4)  # not the centre view's alone
    with pytest.raises(ValueError, match="not views of 4 segments"):
        model(paddle.randn([1, 6, 3, 32, 32]))


@pytest.mark.parametrize("depth", [18, 50])
def test_shift_switch_changes_temporal_behaviour(depth: int) -> None:
    """TSN ignores frame order; TSM does not."""
    tsm = build_tsm(depth, num_classes=3, num_seg=4, base_width=8)
    tsn = build_tsm(depth, num_classes=3, num_seg=4, shift=False, base_width=8)
    tsn.set_state_dict(tsm.state_dict())
    for m in (tsm, tsn):
        m.eval()
    x = paddle.randn([1, 4, 3, 32, 32])
    reversed_x = paddle.flip(x, axis=[1])
    np.testing.assert_allclose(tsn(x).numpy(), tsn(reversed_x).numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(tsm(x).numpy(), tsm(reversed_x).numpy(), rtol=1e-4, atol=1e-5)


def test_fused_and_slice_shift_networks_agree() -> None:
    fused = build_tsm(18, num_classes=3, num_seg=4, base_width=8, shift_impl="fused")
    sliced = build_tsm(18, num_classes=3, num_seg=4, base_width=8)
    sliced.set_state_dict(fused.state_dict())
    for m in (fused, sliced):
        m.eval()
    x = paddle.randn([2, 4, 3, 32, 32])
    np.testing.assert_allclose(fused(x).numpy(), sliced(x).numpy(), rtol=1e-6, atol=1e-6)
