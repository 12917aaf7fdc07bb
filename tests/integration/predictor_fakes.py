"""Stand-ins for what this machine lacks (a GPU, TensorRT): a ``paddle.inference.Config`` that records every
call bound to Paddle's own signatures, and a TensorRT converter that writes what Paddle's would."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

from paddle import inference

from service.contract.manifest import Manifest, ModelIO, Preprocessing
from service.predictor import (
    BackendChoice,
    PredictorOptions,
    build_config,
    choose_backend,
)
from service.trt_convert import TrtConversion

MANIFEST = Manifest(name="m", version=3, labels=["a", "b"],
                    io=ModelIO(input_name="clips", input_shape=(-1, 8, 3, 112, 112)),
                    preprocessing=Preprocessing(num_seg=8, short_side=128, crop_size=112))


def paddle_signature(name: str) -> inspect.Signature:
    """The signature of ``paddle.inference.Config.<name>`` as its pybind docstring states it (the CPU build has every
    GPU and TensorRT method, so a misspelt or renamed call, or a keyword Paddle does not take, fails here)."""
    first = (getattr(inference.Config, name).__doc__ or "").splitlines()[0]
    inside = first[first.index("(") + 1: first.rindex(") ->")]
    parts, depth, start = [], 0, 0
    for i, char in enumerate(inside + ","):
        depth += (char in "[(<{") - (char in "])>}")
        if char == "," and depth == 0:
            parts.append(inside[start:i].strip())
            start = i + 1
    names = [part.split(":")[0] for part in parts]
    params = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_ONLY if re.fullmatch(r"arg\d+", name) else
                                inspect.Parameter.POSITIONAL_OR_KEYWORD,  # pybind's argN takes no keyword
                                default=None if " = " in part else inspect.Parameter.empty)
              for name, part in zip(names[1:], parts[1:], strict=True)]  # parts[0] is self
    return inspect.Signature(params)


class RecordingConfig:
    """Stands in for ``paddle.inference.Config``: records every call with its arguments, each bound to the real
    method's signature first."""

    def __init__(self, *args: Any) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [("__init__", args, {})]

    def prog_file(self) -> str:
        return str(self.calls[0][1][0])

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> None:
            paddle_signature(name).bind(*args, **kwargs)
            self.calls.append((name, args, kwargs))
        return record


def build(tmp_path: Path, options: PredictorOptions, has_gpu: bool) -> tuple[list[Any], BackendChoice]:
    version_dir = tmp_path / "m" / "3"
    choice = choose_backend(options, has_gpu)
    config = build_config(version_dir, MANIFEST, options, choice, config_cls=RecordingConfig)
    return config.calls, choice


class RecordingConverter:
    """Stands in for the ``paddle.tensorrt`` conversion (no GPU here): records each job, writes the pair."""

    def __init__(self, files: tuple[str, ...] = (".json", ".pdiparams")) -> None:
        self.jobs: list[tuple[TrtConversion, str]] = []
        self.files = files

    def __call__(self, job: TrtConversion, save_prefix: str) -> None:
        """As Paddle does: the engine into the folder ``save_prefix`` (it is save_model_dir), its absolute path into
        the converted model."""
        self.jobs.append((job, save_prefix))
        Path(save_prefix).mkdir()
        engine = Path(save_prefix) / "engine_12345678_1.trt"
        engine.write_bytes(b"engine")
        for suffix in self.files:
            Path(save_prefix + suffix).write_text(json.dumps({"engine": str(engine.resolve())}) if suffix == ".json"
                                                  else "converted")


TRT_FP16 = PredictorOptions(device="auto", precision="fp16", tensorrt=True, gpu_memory_mb=1024,
                            trt_workspace_bytes=1 << 28, trt_min_subgraph_size=5, max_batch_size=4)
