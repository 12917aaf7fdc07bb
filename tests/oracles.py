"""Independent oracles for tests: a bare Paddle Inference predictor on a published version folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.contract.manifest import Manifest


def paddle_logits(folder: Path, clips: np.ndarray, onednn: bool = False) -> np.ndarray:
    """float32 [N, T, 3, crop, crop] -> logits [N, K] from a fresh predictor (not the service's code)."""
    from paddle import inference

    manifest = Manifest.read(folder)
    config = inference.Config(str(folder / manifest.model_file), str(folder / manifest.params_file))
    config.disable_gpu()
    config.disable_glog_info()
    if onednn:
        config.enable_onednn()
    predictor = inference.create_predictor(config)
    handle = predictor.get_input_handle(manifest.io.input_name)
    handle.reshape(list(clips.shape))
    handle.copy_from_cpu(clips)
    predictor.run()
    return predictor.get_output_handle(manifest.io.output_name).copy_to_cpu()
