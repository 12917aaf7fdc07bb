"""The TensorRT conversion runs in a child process that sees only the serving GPU (no GPU here: the child's command is
replaced where it would need one, and the real child is run to its CPU-only failure)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from service.predictor import BackendChoice, PredictorOptions, build_config, choose_backend
from service.trt_convert import TrtConversion, convert_in_subprocess, visible_device
from tests.integration.predictor_fakes import MANIFEST, RecordingConfig, RecordingConverter

JOB = TrtConversion("/r/m/3/model", "clips", (1, 8, 3, 96, 96), (4, 8, 3, 96, 96), (4, 8, 3, 96, 96), "FP16",
                    1 << 28, 5, gpu_id=1)

# Stands in for `python -m service.trt_convert PREFIX`: records its argv, environment and stdin, writes the pair.
RECORDER = """
import json, os, sys
from pathlib import Path
prefix = sys.argv[1]
Path(prefix + ".seen.json").write_text(json.dumps({"argv": sys.argv[1:], "job": json.loads(sys.stdin.read()),
                                                   "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}))
"""


@pytest.mark.parametrize(("gpu_id", "visible", "child"), [
    (1, None, "1"), (1, "2,3", "3"), (0, " 5 , 7 ", "5"), (1, "GPU-aa,GPU-bb", "GPU-bb")])
def test_the_child_sees_the_serving_gpu_alone(gpu_id: int, visible: str | None, child: str) -> None:
    """TSM_GPU_ID counts the devices this process sees; the child must see that same physical one."""
    assert visible_device(gpu_id, visible) == child


def test_a_gpu_id_beyond_the_visible_devices_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"TSM_GPU_ID=2, but CUDA_VISIBLE_DEVICES='0,1' makes only 2"):
        visible_device(2, "0,1")
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES is empty: no device is visible"):
        visible_device(0, "")  # set but empty means none to CUDA, not 'unrestricted'


def test_the_job_reaches_the_child_whole_and_on_its_only_device(tmp_path: Path) -> None:
    prefix = str(tmp_path / "model")
    convert_in_subprocess(JOB, prefix, environ={"CUDA_VISIBLE_DEVICES": "4,6", "PATH": "/usr/bin"},
                          command=[sys.executable, "-c", RECORDER, prefix])
    seen = json.loads(Path(prefix + ".seen.json").read_text())
    assert seen["visible"] == "6" and seen["argv"] == [prefix]
    assert TrtConversion.from_json(json.dumps(seen["job"])) == TrtConversion(
        **{**JOB.__dict__, "gpu_id": 0})  # device 0 of what the child sees


def test_the_child_is_this_python_running_our_module_without_a_shell(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The service's one child process (test_security allows only this): a fixed command line, no shell."""
    import subprocess

    seen: dict[str, Any] = {}

    def recording(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.update(argv=argv, **kwargs)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(subprocess, "run", recording)
    convert_in_subprocess(JOB, str(tmp_path / "model"), environ={})
    assert seen["argv"] == [sys.executable, "-m", "service.trt_convert", str(tmp_path / "model")]
    assert "shell" not in seen and seen["env"] == {"CUDA_VISIBLE_DEVICES": "1"}


def test_a_failed_conversion_says_what_the_child_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The real child on this CPU-only Paddle: its error (the last line of its traceback) is the load's error, and
    its whole output goes to the log."""
    with pytest.raises(RuntimeError) as failed:
        convert_in_subprocess(JOB, str(tmp_path / "model"))
    message = str(failed.value)
    assert message.startswith("the TensorRT conversion of /r/m/3/model failed (exit status 1): ")
    assert "paddle.tensorrt" in message or "CUDA" in message or "GPU" in message, message
    assert "Traceback" in caplog.text
    assert not (tmp_path / "model.json").exists()


def test_the_conversion_is_asked_for_on_the_serving_gpu(tmp_path: Path) -> None:
    options = PredictorOptions(device="gpu", precision="fp16", tensorrt=True, gpu_id=1, max_batch_size=4)
    choice = choose_backend(options, has_gpu=True)
    convert = RecordingConverter()
    calls = build_config(tmp_path / "m" / "3", MANIFEST, options, choice, RecordingConfig, convert).calls
    (job, _), = convert.jobs
    assert job.gpu_id == 1 and choice == BackendChoice("tensorrt", "gpu:1", "fp16")
    assert ("enable_use_gpu", (options.gpu_memory_mb, 1), {}) in calls
