"""The same video scores the same through the service as through training's evaluation path."""

from pathlib import Path

import numpy as np
import paddle

from tests.conftest import LiveServer
from training.checkpoint import build_model, save_checkpoint
from training.config import load_config
from training.data import ClipDataset, collate_clips
from training.workflows import export_checkpoint


def test_service_scores_equal_evaluation_scores(videos: dict[str, Path], tmp_path: Path) -> None:
    names = ["a", "b", "c", "portrait"]
    (tmp_path / "eval.list").write_text("".join(f"{videos[n]} {i % 3}\n" for i, n in enumerate(names)))
    cfg = load_config("tiny", ["model.num_classes=3", "model.num_seg=8", "data.short_side=128", "data.crop_size=112",
                               "name=parity", f"data.valid_list={tmp_path / 'eval.list'}"])
    paddle.seed(7)
    model = build_model(cfg)
    # Training's evaluation path: the dataset's test pipeline and the dygraph network.
    dataset = ClipDataset(cfg, cfg.data.valid_list, train=False)
    batch = collate_clips([dataset[i] for i in range(len(dataset))])
    assert not batch["skipped"]
    # Untrained BN statistics saturate every output; settle them and widen the fc so scores depend on the input.
    with paddle.no_grad():
        for _ in range(30):
            model(paddle.to_tensor(batch["clips"]))
    fc = model.head.fc.weight
    fc.set_value(paddle.randn(fc.shape) * 0.5)
    model.eval()
    checkpoint = save_checkpoint(tmp_path / "ckpt", model, cfg, 1, {})
    export_checkpoint(cfg, checkpoint, tmp_path / "repo")
    expected = paddle.nn.functional.softmax(model(paddle.to_tensor(batch["clips"]))).numpy()
    log_expected = np.log(expected)
    assert np.ptp(log_expected, axis=0).max() > 1.0  # the videos score differently: the comparison can fail

    with LiveServer({"model_repo": tmp_path / "repo", "poll_interval_s": 0, "decode_workers": 1,
                     "cpu_threads": 1}) as live, live.client() as client:
        for row, name in zip(expected, names, strict=True):  # row: softmax over 3 classes
            response = client.post("/classify", files={"file": (f"{name}.mp4", videos[name].read_bytes(),
                                                                "video/mp4")}, params={"top_k": 3})
            assert response.status_code == 200, response.text
            served = np.zeros(3, np.float32)
            for p in response.json()["predictions"]:
                served[p["class_id"]] = p["score"]
            np.testing.assert_allclose(np.log(served), np.log(row), rtol=0, atol=1e-3)
