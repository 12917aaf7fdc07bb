"""The `backend` setting: an export with model.onnx serves on ONNX Runtime, Paddle, or the faster of both."""

from pathlib import Path

import pytest

from service.contract.manifest import Manifest, ModelIO, Preprocessing
from tests.conftest import LiveServer
from training.export import export_to_repo
from training.tsm import build_tsm


@pytest.fixture(scope="module")
def onnx_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("onnx_repo")
    spec = Preprocessing(num_seg=8, short_side=128, crop_size=112)
    manifest = Manifest(name="tiny", version=1, labels=["a", "b", "c"], preprocessing=spec, depth=18,
                        base_width=8, io=ModelIO(input_shape=(-1, 8, 3, 112, 112)))
    folder = export_to_repo(build_tsm(18, 3, 8, base_width=8), repo, manifest, with_onnx=True)
    assert Manifest.read(folder).onnx_file == "model.onnx" and (folder / "model.onnx").is_file()
    return repo


@pytest.mark.parametrize(("backend", "expected"), [("onnxruntime", {"onnxruntime"}), ("paddle", {"paddle"}),
                                                   ("auto", {"paddle", "onnxruntime"})])
def test_backend_setting(onnx_repo: Path, videos: dict[str, Path], backend: str, expected: set[str]) -> None:
    settings = {"model_repo": onnx_repo, "poll_interval_s": 0, "decode_workers": 1, "cpu_threads": 1,
                "backend": backend}
    with LiveServer(settings) as live, live.client() as client:
        served = client.get("/metrics").text
        info = [line for line in served.splitlines() if line.startswith("tsm_model_info{")]
        assert len(info) == 1 and any(f'backend="{b}"' in info[0] for b in expected), info
        response = client.post("/classify", files={"file": ("a.mp4", videos["a"].read_bytes(), "video/mp4")})
        assert response.status_code == 200, response.text
        assert abs(sum(p["score"] for p in response.json()["predictions"]) - 1.0) < 1e-4


def test_onnxruntime_backend_refuses_a_version_without_onnx(tiny_repo_template: Path) -> None:
    settings = {"model_repo": tiny_repo_template, "poll_interval_s": 0, "decode_workers": 1, "backend": "onnxruntime"}
    with LiveServer(settings) as live, live.client() as client:
        assert client.get("/readyz").status_code == 503
        models = client.get("/models").json()
        assert "model.onnx" in str(models)


def test_a_gpu_asked_for_on_a_machine_without_one_is_not_ready_and_says_why(tiny_repo_template: Path) -> None:
    """TSM_DEVICE=gpu (the GPU image's) where no GPU is usable: the version fails, so the replica is not ready
    and its readiness says why, instead of serving at CPU speed behind passing health checks."""
    settings = {"model_repo": tiny_repo_template, "poll_interval_s": 0, "decode_workers": 1, "device": "gpu"}
    with LiveServer(settings) as live, live.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "tiny version 1 failed (NoGpuError: TSM_DEVICE=gpu, but no GPU is usable here" in ready.json()["detail"]
        assert client.get("/models").json()["models"][0]["state"] == "failed"
