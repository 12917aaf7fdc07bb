"""TensorRT for PIR models (``model.json``): convert once with ``paddle.tensorrt.convert``, cache, reuse.

Paddle 3's predictor ignores ``Config.enable_tensorrt_engine`` for a ``.json`` (PIR) model: its PIR
optimisation adds no TensorRT pass. Paddle's documented route (Paddle Inference 3.0, "GPU TensorRT
加速推理", and ``paddle.tensorrt.convert``'s docstring) is an offline conversion that writes a new
``.json``/``.pdiparams`` pair whose TensorRT subgraphs are ``tensorrt_engine`` ops with built engines,
which a plain GPU predictor then runs. The conversion builds the engines, so it is slow (minutes); its
result is kept in the version's TensorRT cache folder and reused on the next load.

The conversion runs in a child process (``python -m service.trt_convert``): it switches Paddle into static mode
and turns on shape collection for the whole process while it runs, beside versions serving on other threads, and it
converts on ``CUDAPlace(0)`` whatever device was asked for. The child sees only the GPU the service serves on
(``CUDA_VISIBLE_DEVICES``), so its engines are built for that GPU, and what it loads leaves with it.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

log = logging.getLogger(__name__)

CONVERTED = "pir-trt"  # each conversion's folder inside the cache dir: pir-trt-<hex>/model.json + model.pdiparams
PREFIX = "model"
POINTER = "pir-trt.current"  # names the converted folder in use
ENGINES = "engines.json"  # in a converted folder: the engine files the conversion wrote, all needed to load it
_FOLDER = re.compile(rf"{CONVERTED}-[0-9a-f]{{32}}")


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
    gpu_id: int = 0  # the CUDA device index the service serves on (TSM_GPU_ID)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrtConversion:
        fields = json.loads(text)
        shapes = {k: tuple(fields[k]) for k in ("min_shape", "opt_shape", "max_shape")}
        return cls(**{**fields, **shapes})


ERROR_TAIL = 4000  # characters of the child's output logged when it fails


def visible_device(gpu_id: int, visible: str | None) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a child that must see device ``gpu_id`` of this process, alone: the
    ``gpu_id``-th entry of this process's own list where it has one (indices or ``GPU-<uuid>`` names)."""
    if visible is None:
        return str(gpu_id)
    if not visible.strip():  # set but empty: CUDA sees no device at all
        raise ValueError(f"TSM_GPU_ID={gpu_id}, but CUDA_VISIBLE_DEVICES is empty: no device is visible")
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if gpu_id >= len(entries):
        raise ValueError(f"TSM_GPU_ID={gpu_id}, but CUDA_VISIBLE_DEVICES={visible!r} makes only {len(entries)} "
                         "device(s) visible")
    return entries[gpu_id]


def convert_in_subprocess(job: TrtConversion, save_prefix: str, *, environ: Mapping[str, str] | None = None,
                          command: list[str] | None = None) -> None:
    """:func:`convert_with_paddle` in a child that sees only ``job.gpu_id``'s device (``command`` replaces the
    child's command line in tests); a failure raises RuntimeError with what the child said."""
    env = dict(os.environ if environ is None else environ)
    env["CUDA_VISIBLE_DEVICES"] = visible_device(job.gpu_id, env.get("CUDA_VISIBLE_DEVICES"))
    child = replace(job, gpu_id=0)  # the only device the child sees
    argv = command or [sys.executable, "-m", "service.trt_convert", save_prefix]
    done = subprocess.run(argv, input=child.to_json(), env=env, capture_output=True, text=True, check=False)
    said = "\n".join(part.strip() for part in (done.stdout, done.stderr) if part and part.strip())
    if done.returncode != 0:
        log.error("the TensorRT conversion's child process said:\n%s", said[-ERROR_TAIL:])
        lines = said.splitlines()
        # The exception, under its traceback (Paddle may print more after it, at exit).
        errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
        last = (errors or lines or ["it printed nothing"])[-1]
        raise RuntimeError(f"the TensorRT conversion of {job.model_prefix} failed (exit status {done.returncode}): "
                           f"{last}")
    log.debug("the TensorRT conversion's child process said:\n%s", said[-ERROR_TAIL:])


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
        # A scope of its own, removed after: the model's parameters are loaded into the global scope otherwise,
        # on the GPU, and stay there for the life of the process. Paddle's pool owns every Scope(), so dropping the
        # Python object would free nothing.
        scope = paddle.static.Scope()
        try:
            with paddle.static.scope_guard(scope):
                convert(job.model_prefix, config)
        finally:
            gc.collect()
            scope._remove_from_pool()
    finally:
        if was_dynamic:
            paddle.disable_static()


def converted_model(job: TrtConversion, cache: Path,
                    convert: Callable[[TrtConversion, str], None] = convert_in_subprocess) -> tuple[Path, Path]:
    """The converted (model, params) files in ``cache``, converting first unless the pointer names a complete pair.

    The converted model holds the absolute path of each engine file Paddle wrote beside it (``model/engine_*.trt``)
    and falls back only on a process-wide flag set once (see :func:`engine_folder`), so a converted folder is never
    moved: each conversion writes a folder of its own, and a pointer file, replaced atomically, names the one in
    use. A crash mid-conversion or two replicas sharing the cache never leave a pointer to half a pair.
    """
    cache = cache.resolve()  # the converted model stores its engines' paths as given: absolute ones
    current = _current(cache)
    if current is not None:
        return _pair(current)
    # Unique per attempt: replicas sharing the cache volume often have the same pid (1 in a container).
    folder = cache / f"{CONVERTED}-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    log.info("converting %s for TensorRT (%s); the engines are built now, this takes a while",
             job.model_prefix, job.precision)
    try:
        convert(job, str(folder / PREFIX))
        missing = [f.name for f in _pair(folder) if not f.is_file()]
        if missing:
            raise RuntimeError(f"the TensorRT conversion wrote no {', '.join(missing)}")
        engines = sorted(str(f.relative_to(folder)) for f in (folder / PREFIX).glob("*.trt"))
        (folder / ENGINES).write_text(json.dumps(engines) + "\n")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    first = _current(cache)
    if first is not None:  # another replica finished first: use its pair, so one folder stays
        shutil.rmtree(folder, ignore_errors=True)
        return _pair(first)
    _point_at(cache, folder)
    return _pair(folder)


def engine_folder(model: Path) -> str:
    """Where the engines of the converted ``model`` lie: what Paddle's ``FLAGS_trt_engine_serialized_path`` must
    say when a stored engine path can't be read (a repository mounted elsewhere). Paddle sets that flag once a
    process, for its first GPU predictor, so the service sets it for each converted model it loads."""
    return str(model.with_suffix(""))


def _current(cache: Path) -> Path | None:
    """The complete converted folder the pointer names, or None (no pointer, or one naming anything else)."""
    try:
        name = (cache / POINTER).read_text().strip()
    except (OSError, ValueError):  # ValueError: bytes that are no text
        return None
    if not _FOLDER.fullmatch(name) or not _complete(cache / name):
        return None
    return cache / name


def _point_at(cache: Path, folder: Path) -> None:
    """Name ``folder`` in the pointer (a rename over the old pointer: readers see the old name or the new one).

    The folder it named before stays: another replica may be loading it, and whether a folder is whole can only be
    read with a stat that a network filesystem may fail for a moment."""
    staged = cache / f".{POINTER}-{uuid.uuid4().hex}"
    staged.write_text(folder.name + "\n")
    os.replace(staged, cache / POINTER)


def _pair(folder: Path) -> tuple[Path, Path]:
    """The converted model and parameter files in ``folder``."""
    return folder / f"{PREFIX}.json", folder / f"{PREFIX}.pdiparams"


def _complete(folder: Path) -> bool:
    """The pair and every engine file the conversion listed are there (a pair without its engines never loads)."""
    try:
        engines = json.loads((folder / ENGINES).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(engines, list) or not all(isinstance(name, str) for name in engines):
        return False  # not the list a conversion writes
    return all(f.is_file() for f in _pair(folder)) and all((folder / name).is_file() for name in engines)


def main() -> None:
    """``python -m service.trt_convert SAVE_PREFIX`` with the job as JSON on stdin: the child's side."""
    logging.basicConfig(level=logging.INFO)
    convert_with_paddle(TrtConversion.from_json(sys.stdin.read()), sys.argv[1])


if __name__ == "__main__":
    main()
