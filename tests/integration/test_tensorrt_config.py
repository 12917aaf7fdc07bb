"""TensorRT on Paddle Inference, configured exactly (a recording Config and converter; no GPU here): the
conversion of a PIR model once per GPU architecture and TensorRT version, shared by replicas, and the
subgraph engine of a .pdmodel."""

from __future__ import annotations

import enum
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import paddle
import pytest
from paddle import inference
from paddle.inference import PrecisionType

from service.predictor import (
    BackendChoice,
    Predictor,
    PredictorOptions,
    build_config,
    choose_backend,
    trt_conversion,
)
from service.trt_convert import TrtConversion, convert_with_paddle
from tests.integration.predictor_fakes import (
    MANIFEST,
    TRT_FP16,
    RecordingConfig,
    RecordingConverter,
)


def test_gpu_tensorrt_fp16_converts_the_pir_model_once_and_runs_the_converted_pair(tmp_path: Path) -> None:
    version_dir, convert = tmp_path / "m" / "3", RecordingConverter()
    choice = choose_backend(TRT_FP16, has_gpu=True)
    calls = build_config(version_dir, MANIFEST, TRT_FP16, choice, RecordingConfig, convert).calls
    cache = tmp_path / "m" / ".cache" / "3" / "trt-fp16-b4-gpu0"
    (job, save_prefix), = convert.jobs
    assert job == TrtConversion(model_prefix=str(version_dir / "model"), input_name="clips",
                                min_shape=(1, 8, 3, 112, 112), opt_shape=(4, 8, 3, 112, 112),
                                max_shape=(4, 8, 3, 112, 112), precision="FP16", workspace_bytes=1 << 28,
                                min_subgraph_size=5)
    converted = Path(save_prefix).parent  # a folder of its own, never moved: the engines' stored paths hold
    assert converted.parent == cache and (cache / "pir-trt.current").read_text() == converted.name + "\n"
    assert calls == [("__init__", (str(converted / "model.json"), str(converted / "model.pdiparams")), {}),
                     ("enable_use_gpu", (1024, 0), {}),
                     ("switch_ir_optim", (True,), {}), ("disable_glog_info", (), {})]
    engine = json.loads((converted / "model.json").read_text())["engine"]
    assert Path(engine).is_file() and Path(engine).parent == converted / "model"
    assert "enable_tensorrt_engine" not in [c[0] for c in calls]  # Paddle ignores it for a PIR model
    assert sorted(p.name for p in cache.iterdir()) == sorted(["pir-trt.current", converted.name])
    assert choice == BackendChoice("tensorrt", "gpu:0", "fp16")
    again = build_config(version_dir, MANIFEST, TRT_FP16, choice, RecordingConfig, convert).calls
    assert len(convert.jobs) == 1 and again == calls  # a restart reuses the converted model


def test_a_conversion_that_writes_half_a_model_fails_and_leaves_nothing(tmp_path: Path) -> None:
    choice = choose_backend(TRT_FP16, has_gpu=True)
    with pytest.raises(RuntimeError, match=r"wrote no model\.pdiparams"):
        build_config(tmp_path / "m" / "3", MANIFEST, TRT_FP16, choice, RecordingConfig,
                     RecordingConverter(files=(".json",)))
    assert list((tmp_path / "m" / ".cache" / "3" / "trt-fp16-b4-gpu0").iterdir()) == []


def _published(cache: Path) -> Path:
    """The converted folder the cache's pointer names."""
    return cache / (cache / "pir-trt.current").read_text().strip()


def test_a_replica_that_converts_second_uses_the_pair_converted_first(tmp_path: Path) -> None:
    from service.trt_convert import converted_model

    cache = tmp_path / "m" / ".cache" / "3" / "trt-fp16-b4-gpu0"
    first: dict[str, tuple[Path, Path]] = {}

    def racing(job: TrtConversion, save_prefix: str) -> None:
        first["pair"] = converted_model(job, cache, RecordingConverter())  # another replica finishes first
        RecordingConverter()(job, save_prefix)

    calls = build_config(tmp_path / "m" / "3", MANIFEST, TRT_FP16, choose_backend(TRT_FP16, True), RecordingConfig,
                         racing).calls
    assert calls[0][1][0] == str(first["pair"][0]) == str(_published(cache) / "model.json")
    assert sorted(p.name for p in cache.iterdir()) == sorted(["pir-trt.current", _published(cache).name])


def test_two_conversions_at_once_never_share_a_work_folder(tmp_path: Path) -> None:
    """Replicas sharing the cache often have the same pid (1 in a container): one must not clear the other's work."""
    import threading

    from service.trt_convert import converted_model

    job = trt_conversion(tmp_path / "m" / "3", MANIFEST, TRT_FP16, choose_backend(TRT_FP16, True))
    cache, results = tmp_path / "cache", {}

    def second(job: TrtConversion, save_prefix: str) -> None:
        RecordingConverter()(job, save_prefix)

    def first(job: TrtConversion, save_prefix: str) -> None:
        other = threading.Thread(target=lambda: results.update(second=converted_model(job, cache, second)))
        other.start()
        other.join()  # the other replica converts and publishes while this one is half way
        RecordingConverter()(job, save_prefix)  # this one's work folder must still be there

    results["first"] = converted_model(job, cache, first)
    folder = _published(cache)
    assert results["first"] == results["second"] == (folder / "model.json", folder / "model.pdiparams")
    assert sorted(p.name for p in cache.iterdir()) == sorted(["pir-trt.current", folder.name])


def test_a_converted_folder_that_lost_a_file_is_converted_again(tmp_path: Path) -> None:
    cache = tmp_path / "m" / ".cache" / "3" / "trt-fp16-b4-gpu0"
    damaged = cache / f"pir-trt-{'0' * 32}"
    damaged.mkdir(parents=True)
    (damaged / "model.json").write_text("left alone by someone")  # its .pdiparams was deleted
    (cache / "pir-trt.current").write_text(damaged.name + "\n")
    (cache / "pir-trt").mkdir()  # the layout before: its engines' stored paths are dead, so it is never used
    (cache / "pir-trt" / "model.json").write_text("old")
    (cache / "pir-trt" / "model.pdiparams").write_text("old")
    convert = RecordingConverter()
    calls = build_config(tmp_path / "m" / "3", MANIFEST, TRT_FP16, choose_backend(TRT_FP16, True), RecordingConfig,
                         convert).calls
    folder = _published(cache)
    assert len(convert.jobs) == 1 and folder != damaged and calls[0][1][0] == str(folder / "model.json")
    # Left for an operator: whether a folder is whole is a stat a network filesystem may fail for a moment, and
    # another replica may be loading it.
    assert sorted(p.name for p in cache.iterdir()) == sorted(["pir-trt", "pir-trt.current", folder.name,
                                                             damaged.name])
    (folder / "engines.json").write_text("5")  # not the list a conversion writes: converted again
    assert build_config(tmp_path / "m" / "3", MANIFEST, TRT_FP16, choose_backend(TRT_FP16, True), RecordingConfig,
                        convert).calls[0][1][0] != str(folder / "model.json") and len(convert.jobs) == 2
    folder = _published(cache)
    (folder / "model" / "engine_12345678_1.trt").unlink()  # the pair is there, an engine it needs is not
    calls = build_config(tmp_path / "m" / "3", MANIFEST, TRT_FP16, choose_backend(TRT_FP16, True), RecordingConfig,
                         convert).calls
    assert len(convert.jobs) == 3 and _published(cache) != folder
    assert calls[0][1][0] == str(_published(cache) / "model.json")


def test_a_pointer_naming_anything_but_a_converted_folder_is_ignored(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "elsewhere").mkdir(parents=True)
    for suffix in (".json", ".pdiparams"):
        (cache / "elsewhere" / f"model{suffix}").write_text("not ours")
    from service.trt_convert import converted_model

    job = trt_conversion(tmp_path / "m" / "3", MANIFEST, TRT_FP16, choose_backend(TRT_FP16, True))
    for junk in (b"../cache/elsewhere\n", b"\xff\xfe not text"):
        (cache / "pir-trt.current").write_bytes(junk)
        model, _ = converted_model(job, cache, RecordingConverter())
        assert model.parent == _published(cache) and model.parent.name.startswith("pir-trt-")


def test_each_converted_model_reads_its_engines_with_the_engine_flag_at_its_own_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Paddle reads a converted model's engines from the paths stored in it, else from FLAGS_trt_engine_serialized_path,
    which it sets once a process: each version is made and first run with the flag at its own folder (else a
    second version of one network may load the first one's engine: the same file name, other weights)."""
    import service.predictor as predictor_module

    def flag() -> str:
        return paddle.get_flags(["FLAGS_trt_engine_serialized_path"])["FLAGS_trt_engine_serialized_path"]

    seen: list[tuple[str, str]] = []

    class FakePredictor:  # paddle.inference's predictor, for a GPU build we don't have
        def __init__(self, config: RecordingConfig) -> None:
            seen.append(("create", flag()))

        def get_input_handle(self, name: str) -> Any:
            return types.SimpleNamespace(reshape=lambda shape: None, copy_from_cpu=lambda array: None)

        def get_output_names(self) -> list[str]:
            return [MANIFEST.io.output_name]

        def run(self) -> None:
            seen.append(("run", flag()))

        def get_output_handle(self, name: str) -> Any:
            return types.SimpleNamespace(copy_to_cpu=lambda: np.zeros((1, 2), np.float32))

    real_build = predictor_module.build_config
    monkeypatch.setattr(inference, "create_predictor", FakePredictor)
    monkeypatch.setattr(predictor_module, "gpu_signature", lambda gpu_id: "sm90-trt10.5.0")
    monkeypatch.setattr(predictor_module, "build_config", lambda *args: real_build(
        *args, config_cls=RecordingConfig, trt_convert=RecordingConverter()))
    before, batch = flag(), np.zeros((1, 8, 3, 112, 112), np.float32)
    try:
        three, four = (Predictor(tmp_path / "m" / v, MANIFEST, TRT_FP16, has_gpu=True) for v in ("3", "4"))
        three.run(batch)
        four.run(batch)
        four.run(batch)
    finally:
        paddle.set_flags({"FLAGS_trt_engine_serialized_path": before})
    engines = [str(_published(tmp_path / "m" / ".cache" / v / "trt-fp16-b4-gpu0-sm90-trt10.5.0") / "model")
               for v in ("3", "4")]
    assert seen == [("create", engines[0]), ("create", engines[1]), ("run", engines[0]), ("run", engines[1]),
                    ("run", engines[1])]
    assert not predictor_module._ENGINE_FLAG_LOCK.locked()


def test_tensorrt_conversion_needs_model_and_params_of_one_name(tmp_path: Path) -> None:
    manifest = MANIFEST.model_copy(update={"params_file": "weights.pdiparams"})
    with pytest.raises(ValueError, match="share a name"):
        build_config(tmp_path, manifest, TRT_FP16, choose_backend(TRT_FP16, True), RecordingConfig,
                     RecordingConverter())


def test_convert_with_paddle_hands_the_job_to_paddle_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented ``paddle.tensorrt`` API (Input, TensorRTConfig, PrecisionMode, convert), recorded."""
    seen: dict[str, Any] = {}
    fake = types.ModuleType("paddle.tensorrt")
    fake.Input = lambda **kw: ("Input", kw)  # type: ignore[attr-defined]
    fake.TensorRTConfig = lambda **kw: ("TensorRTConfig", kw)  # type: ignore[attr-defined]
    fake.PrecisionMode = enum.Enum("PrecisionMode", {"FP32": "FP32", "FP16": "FP16", "INT8": "INT8"})  # type: ignore[attr-defined]
    fake.convert = lambda path, config: seen.update(  # type: ignore[attr-defined]
        path=path, config=config, static=not paddle.in_dynamic_mode(), scope=paddle.static.global_scope())
    monkeypatch.setitem(sys.modules, "paddle.tensorrt", fake)
    job = TrtConversion("/r/m/3/model", "clips", (1, 8, 3, 96, 96), (4, 8, 3, 96, 96), (4, 8, 3, 96, 96),
                        "FP16", 1 << 28, 5)
    convert_with_paddle(job, "/r/m/.cache/3/x/model")
    assert seen["path"] == "/r/m/3/model"
    assert seen["static"] and paddle.in_dynamic_mode()  # converted in static mode, dynamic mode restored after
    assert seen["scope"] is not paddle.static.global_scope()  # a scope of its own: the weights don't stay loaded
    with pytest.raises(RuntimeError, match="not found in ScopePool"):
        seen["scope"]._remove_from_pool()  # it was removed (Paddle's pool owns every Scope it makes)
    name, kw = seen["config"]
    clip = ("Input", {"min_input_shape": (1, 8, 3, 96, 96), "optim_input_shape": (4, 8, 3, 96, 96),
                      "max_input_shape": (4, 8, 3, 96, 96), "input_data_type": "float32", "name": "clips"})
    assert name == "TensorRTConfig" and kw == {
        "inputs": [clip], "min_subgraph_size": 5, "save_model_dir": "/r/m/.cache/3/x/model",
        "precision_mode": fake.PrecisionMode.FP16, "workspace_size": 1 << 28}


def test_gpu_tensorrt_fp16_on_a_pdmodel_uses_the_subgraph_engine(tmp_path: Path) -> None:
    manifest = MANIFEST.model_copy(update={"model_file": "model.pdmodel"})
    choice = choose_backend(TRT_FP16, has_gpu=True)
    convert = RecordingConverter()
    calls = build_config(tmp_path / "m" / "3", manifest, TRT_FP16, choice, RecordingConfig, convert).calls
    cache = tmp_path / "m" / ".cache" / "3" / "trt-fp16-b4-gpu0"
    assert calls[0] == ("__init__", (str(tmp_path / "m" / "3" / "model.pdmodel"),
                                     str(tmp_path / "m" / "3" / "model.pdiparams")), {})
    assert calls[1:] == [
        ("enable_use_gpu", (1024, 0), {}),
        ("enable_tensorrt_engine", (), {"workspace_size": 1 << 28, "max_batch_size": 4 * 8, "min_subgraph_size": 5,
                                        "precision_mode": PrecisionType.Half, "use_static": True,
                                        "use_calib_mode": False}),
        ("set_trt_dynamic_shape_info", (), {"min_input_shape": {"clips": [1, 8, 3, 112, 112]},
                                            "max_input_shape": {"clips": [4, 8, 3, 112, 112]},
                                            "optim_input_shape": {"clips": [4, 8, 3, 112, 112]}}),
        ("set_optim_cache_dir", (str(cache),), {}),
        ("switch_ir_optim", (True,), {}), ("disable_glog_info", (), {})]
    assert cache.is_dir() and convert.jobs == []


def test_tensorrt_shapes_of_a_three_crop_model_hold_num_seg_frames_for_each_crop(tmp_path: Path) -> None:
    three = MANIFEST.model_copy(update={
        "preprocessing": MANIFEST.preprocessing.model_copy(update={"spatial_crops": 3}),
        "io": MANIFEST.io.model_copy(update={"input_shape": (-1, 24, 3, 112, 112)})})
    convert = RecordingConverter()
    build_config(tmp_path / "m" / "3", three, TRT_FP16, choose_backend(TRT_FP16, True), RecordingConfig, convert)
    (job, _), = convert.jobs
    assert (job.min_shape, job.opt_shape, job.max_shape) == ((1, 24, 3, 112, 112), (4, 24, 3, 112, 112),
                                                             (4, 24, 3, 112, 112))
    pdmodel = three.model_copy(update={"model_file": "model.pdmodel"})
    calls = build_config(tmp_path / "n" / "3", pdmodel, TRT_FP16, choose_backend(TRT_FP16, True), RecordingConfig,
                         RecordingConverter()).calls
    engine = dict((name, (args, kw)) for name, args, kw in calls)
    assert engine["enable_tensorrt_engine"][1]["max_batch_size"] == 4 * 24  # the network sees N*24 frames
    assert engine["set_trt_dynamic_shape_info"][1]["max_input_shape"] == {"clips": [4, 24, 3, 112, 112]}


def test_tensorrt_int8(tmp_path: Path) -> None:
    options = PredictorOptions(device="gpu", precision="int8", tensorrt=True)
    convert = RecordingConverter()
    build_config(tmp_path / "a", MANIFEST, options, choose_backend(options, True), RecordingConfig, convert)
    assert convert.jobs[0][0].precision == "INT8"
    legacy = MANIFEST.model_copy(update={"model_file": "model.pdmodel"})
    calls = build_config(tmp_path / "b", legacy, options, choose_backend(options, True), RecordingConfig).calls
    trt = next(c for c in calls if c[0] == "enable_tensorrt_engine")
    assert trt[2]["precision_mode"] == PrecisionType.Int8 and trt[2]["use_calib_mode"] is False


def test_a_shared_tensorrt_cache_root_keeps_each_model_apart(tmp_path: Path) -> None:
    from service.predictor import trt_cache_dir

    options = PredictorOptions(device="gpu", tensorrt=True, trt_cache_dir=tmp_path / "cache")
    choice = choose_backend(options, has_gpu=True)
    a, b = (trt_cache_dir(tmp_path / "repo" / name / "1", options, choice) for name in ("a", "b"))
    assert a != b and a == tmp_path / "cache" / "a" / "1" / "trt-fp32-b8-gpu0"
    default = trt_cache_dir(tmp_path / "repo" / "a" / "1", PredictorOptions(device="gpu", tensorrt=True), choice)
    assert default == tmp_path / "repo" / "a" / ".cache" / "1" / "trt-fp32-b8-gpu0"


def test_tensorrt_engines_are_cached_per_gpu_architecture_and_tensorrt_version(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared cache (the model repository's volume) seen by an A100 and an H100 node, or by an image with a newer
    TensorRT, must not hand one's serialised engines to the other: they load only where they were built."""
    import dataclasses

    import paddle
    from paddle import inference

    from service.predictor import gpu_signature, trt_cache_dir

    monkeypatch.setattr(paddle.device.cuda, "get_device_capability", lambda gpu_id: {0: (9, 0), 1: (8, 0)}[gpu_id])
    monkeypatch.setattr(inference, "get_trt_runtime_version", lambda: (10, 5, 0))
    assert (gpu_signature(0), gpu_signature(1)) == ("sm90-trt10.5.0", "sm80-trt10.5.0")
    options = PredictorOptions(device="gpu", tensorrt=True, precision="fp16", max_batch_size=16)
    choice = choose_backend(options, has_gpu=True)
    version = tmp_path / "repo" / "m" / "3"
    h100, a100 = (trt_cache_dir(version, options, dataclasses.replace(choice, hardware=gpu_signature(i)))
                  for i in (0, 1))
    assert h100 == tmp_path / "repo" / "m" / ".cache" / "3" / "trt-fp16-b16-gpu0-sm90-trt10.5.0"
    assert a100.name == "trt-fp16-b16-gpu0-sm80-trt10.5.0" and a100.parent == h100.parent
