"""The seed's optimisation recipe: Momentum, L2, global-norm clipping, per-epoch piecewise LR, AMP."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import paddle
from paddle.regularizer import L2Decay

from training.config import Config

log = logging.getLogger(__name__)


def make_optimizer(cfg: Config, model: paddle.nn.Layer) -> tuple[paddle.optimizer.Optimizer,
                                                                  paddle.optimizer.lr.PiecewiseDecay]:
    """Momentum (or Adam) with PiecewiseDecay (stepped once per epoch by the loop) and ClipGradByGlobalNorm.

    The global L2 applies where a parameter has no regularizer of its own: BN γ/β and the fc
    bias carry L2Decay(0), the fc weight its own 1e-4; the fc lr multipliers (5×, 10×) live
    in the head's ParamAttrs.
    """
    o = cfg.optimizer
    schedule = paddle.optimizer.lr.PiecewiseDecay(boundaries=o.boundaries, values=o.values)
    common = {
        "learning_rate": schedule, "parameters": model.parameters(),
        "weight_decay": L2Decay(o.weight_decay) if o.weight_decay > 0 else None,
        "grad_clip": paddle.nn.ClipGradByGlobalNorm(o.clip_norm),
    }
    if o.name == "adam":
        # Adam's per-parameter step size ignores the fc's Normal(0, 0.001) init, which starves every
        # backbone gradient under Momentum when nothing is pretrained.
        return paddle.optimizer.Adam(**common), schedule
    return paddle.optimizer.Momentum(momentum=o.momentum, **common), schedule


@dataclass(frozen=True)
class AmpPlan:
    """How mixed precision runs: off on CPU (Paddle's AMP here targets CUDA), as PaddleVideo on GPU."""

    enabled: bool
    level: str = "O1"
    init_loss_scaling: float = 2.0**16
    incr_every_n_steps: int = 2000
    decr_every_n_nan_or_inf: int = 1
    custom_black_list: tuple[str, ...] = ("reduce_mean", "conv3d")


def amp_plan(cfg: Config, has_gpu: bool | None = None) -> AmpPlan:
    """PaddleVideo's ``--amp`` settings; disabled with a warning where no GPU is present."""
    if not cfg.train.amp:
        return AmpPlan(enabled=False)
    gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0 \
        if has_gpu is None else has_gpu
    if not gpu:
        log.warning("--amp asks for mixed precision, which needs a CUDA GPU; training in FP32")
        return AmpPlan(enabled=False)
    return AmpPlan(enabled=True, level=cfg.train.amp_level)


def make_scaler(plan: AmpPlan) -> paddle.amp.GradScaler | None:
    if not plan.enabled:
        return None
    return paddle.amp.GradScaler(init_loss_scaling=plan.init_loss_scaling,
                                 incr_every_n_steps=plan.incr_every_n_steps,
                                 decr_every_n_nan_or_inf=plan.decr_every_n_nan_or_inf)
