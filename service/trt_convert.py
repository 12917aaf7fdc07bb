"""TensorRT for PIR models (``model.json``): convert once with ``paddle.tensorrt.convert``, cache, reuse.

Paddle 3's predictor ignores ``Config.enable_tensorrt_engine`` for a ``.json`` (PIR) model: its PIR
optimisation adds no TensorRT pass. Paddle's documented route (Paddle Inference 3.0, "GPU TensorRT
加速推理", and ``paddle.tensorrt.convert``'s docstring) is an offline conversion that writes a new
``.json``/``.pdiparams`` pair whose TensorRT subgraphs are ``tensorrt_engine`` ops with built engines,
which a plain GPU predictor then runs. The conversion builds the engines, so it is slow (minutes); its
result is kept in the version's TensorRT cache folder and reused on the next load.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CONVERTED = "pir-trt"  # folder inside the cache dir holding the converted pair
PREFIX = "model"  # the converted pair is <CONVERTED>/model.json + model.pdiparams


@dataclass(frozen=True)
class TrtConversion:
    """Everything handed to ``paddle.tensorrt``: plain values, so a test can check them without a GPU."""

    model_prefix: str  # the exported model without ".json": Paddle adds .json and .pdiparams to it
    input_name: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    precision: str  # "FP32", "FP16" or "INT8": the names of paddle.tensorrt.PrecisionMode
    workspace_bytes: int
    min_subgraph_size: int


def convert_with_paddle(job: TrtConversion, save_prefix: str) -> None:
    """Run the documented conversion, writing ``save_prefix``.json/.pdiparams (needs a CUDA + TensorRT build of
    Paddle, and a GPU)."""
    import paddle
    from paddle.tensorrt import Input, PrecisionMode, TensorRTConfig, convert

    clip = Input(min_input_shape=job.min_shape, optim_input_shape=job.opt_shape, max_input_shape=job.max_shape,
                 input_data_type="float32", name=job.input_name)
    config = TensorRTConfig(inputs=[clip], min_subgraph_size=job.min_subgraph_size, save_model_dir=save_prefix,
                            precision_mode=PrecisionMode[job.precision], workspace_size=job.workspace_bytes)
    # convert() loads the model with paddle.static.load_inference_model, which refuses to run in dynamic mode
    # (Paddle's own tests convert in static mode). Nothing else in the service uses Paddle's dynamic mode.
    was_dynamic = paddle.in_dynamic_mode()
    paddle.enable_static()
    try:
        convert(job.model_prefix, config)
    finally:
        if was_dynamic:
            paddle.disable_static()


def converted_model(job: TrtConversion, cache: Path,
                    convert: Callable[[TrtConversion, str], None] = convert_with_paddle) -> tuple[Path, Path]:
    """The converted (model, params) files in ``cache``, converting first unless a complete pair is there.

    The pair is written into a private folder beside the final one and renamed into place, so a crash
    mid-conversion or two replicas sharing the cache never leave half a pair. Paddle writes the engines into
    a folder named like the pair (``model/``) and finds them relative to it, so the whole folder moves as one
    (Paddle's own tests load a converted model from a copy of it).
    """
    final = cache / CONVERTED
    files = _pair(final)
    if _complete(final):
        return files
    # Unique per attempt: replicas sharing the cache volume often have the same pid (1 in a container).
    work = cache / f".{CONVERTED}-{uuid.uuid4().hex}"
    work.mkdir(parents=True)
    log.info("converting %s for TensorRT (%s); the engines are built now, this takes a while",
             job.model_prefix, job.precision)
    try:
        convert(job, str(work / PREFIX))
        missing = [f.name for f in _pair(work) if not f.is_file()]
        if missing:
            raise RuntimeError(f"the TensorRT conversion wrote no {', '.join(missing)}")
        _move_into_place(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return files


def _pair(folder: Path) -> tuple[Path, Path]:
    """The converted model and parameter files in ``folder``."""
    return folder / f"{PREFIX}.json", folder / f"{PREFIX}.pdiparams"


def _complete(folder: Path) -> bool:
    return all(f.is_file() for f in _pair(folder))


def _move_into_place(work: Path, final: Path) -> None:
    try:
        work.rename(final)
    except OSError:
        if _complete(final):  # another replica finished first: use its pair
            return
        # Only complete folders are ever renamed into place, so this one lost files after the fact: set it
        # aside (a rename, so a reader never sees it half deleted) and put the new conversion there.
        trash = final.with_name(f".{final.name}-discarded-{uuid.uuid4().hex}")
        final.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        work.rename(final)
