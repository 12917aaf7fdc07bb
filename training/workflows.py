"""Checkpoint-level jobs shared by the CLI and the demo: evaluate one, export one."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from service.contract.manifest import Manifest, ModelIO, list_versions
from training.checkpoint import (
    build_model,
    check_finite_weights,
    check_recorded_labels,
    check_recorded_preprocessing,
    labels_of,
    load_weights,
    read_meta,
)
from training.config import Config
from training.data import ClipDataset, make_loader, unread_list_hint
from training.evaluate import EvalResult, evaluate, write_evaluation
from training.export import check_name, export_to_repo, onnx_available, sha256_file

log = logging.getLogger(__name__)


def evaluate_checkpoint(cfg: Config, checkpoint: Path, list_file: str | None = None,
                        out_dir: Path | None = None) -> EvalResult:
    """Evaluate with the shared test pipeline; writes ``confusion_matrix.png`` and ``evaluation.json`` (the
    figures, for scripts that gate on them) into ``out_dir``, by default the checkpoint's own run folder (the
    config's ``train.output_dir`` may be another run's)."""
    labels = labels_of(cfg)  # a wrong label list must fail now, not after the whole evaluation
    list_file = list_file or cfg.data.valid_list
    if not list_file:
        raise ValueError("no list file to evaluate on: data.valid_list is empty (set it with "
                         "-o data.valid_list=FILE, or give --list FILE)")
    check_recorded_preprocessing(cfg, checkpoint)
    check_recorded_labels(cfg, checkpoint)
    model = build_model(cfg)
    load_weights(model, checkpoint)
    dataset = ClipDataset(cfg, list_file, train=False)
    loader = make_loader(dataset, cfg.data.test_batch_size, cfg.data.num_workers, shuffle=False)
    result = evaluate(model, loader, cfg.model.num_classes)
    if result.count == 0:
        raise ValueError(f"no clip of {list_file} could be read ({len(result.skipped)} skipped): "
                         f"{unread_list_hint(cfg)}")
    write_evaluation(result, out_dir or checkpoint.parent, labels, cfg.name,
                     {"checkpoint": str(checkpoint), "list": str(list_file)})
    log.info("evaluated %s: top-1 %.4f, top-5 %.4f on %d clips", checkpoint, result.top1, result.top5, result.count)
    return result


def manifest_for(cfg: Config, checkpoint: Path, metrics: dict[str, float]) -> Manifest:
    spec = cfg.preprocessing()
    m = cfg.model
    return Manifest(
        name=cfg.name, version=1, labels=labels_of(cfg), preprocessing=spec,
        io=ModelIO(input_shape=spec.input_shape),
        backbone=f"ResNet{'TSM' if m.shift else 'TSN'}-{m.depth}", depth=m.depth, base_width=m.base_width,
        shift=m.shift, data_format=m.data_format, metrics=metrics, dataset=cfg.dataset,
        config=cfg.model_dump(mode="json"), source=checkpoint.name, source_sha256=sha256_file(checkpoint),
    )


def _finite_metrics(found: dict[str, object]) -> dict[str, float]:
    """The numbers a manifest can hold: a NaN or infinite figure (a diverged epoch's loss) is left out, named."""
    numeric = {k: float(v) for k, v in found.items() if isinstance(v, int | float)}
    dropped = sorted(k for k, v in numeric.items() if not math.isfinite(v))
    if dropped:
        log.warning("left out of the manifest, not finite: %s", ", ".join(f"{k}={numeric[k]}" for k in dropped))
    return {k: v for k, v in numeric.items() if k not in dropped}


def export_checkpoint(cfg: Config, checkpoint: Path, repo: Path, name: str | None = None,
                      metrics: dict[str, float] | None = None, with_onnx: bool | None = None) -> Path:
    """Load ``checkpoint`` into the config's network and publish it into ``repo``.

    ``with_onnx`` (default: when paddle2onnx is installed) also writes ``model.onnx`` for ONNX Runtime.
    """
    check_name(name or cfg.name)  # before anything is built or written (model_copy does not validate)
    check_recorded_preprocessing(cfg, checkpoint)
    check_recorded_labels(cfg, checkpoint)
    found = metrics if metrics is not None else read_meta(checkpoint).get("metrics", {})
    manifest = manifest_for(cfg, checkpoint, _finite_metrics(found))
    if name:
        manifest = manifest.model_copy(update={"name": name})
    model = build_model(cfg)
    load_weights(model, checkpoint)
    check_finite_weights(model, checkpoint)
    if same := _published_as(repo / manifest.name, manifest.source_sha256):
        log.warning("%s is already published as %s version %s: this adds another version of the same weights",
                    checkpoint, manifest.name, ", ".join(map(str, same)))
    return export_to_repo(model, repo, manifest, onnx_available() if with_onnx is None else with_onnx)


def _published_as(model_dir: Path, sha256: str) -> list[int]:
    """The versions in ``model_dir`` exported from the checkpoint file with this digest."""
    same = []
    for version in list_versions(model_dir) if model_dir.is_dir() else []:
        try:
            if Manifest.read(model_dir / str(version)).source_sha256 == sha256:
                same.append(version)
        except (OSError, ValueError):  # a broken version is the service's to report
            continue
    return same
