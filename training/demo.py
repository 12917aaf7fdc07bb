"""The one-command demo: synthetic motion videos -> train TSM -> evaluate -> publish into model_repo."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from service.contract.manifest import Manifest, scan_repository
from training.config import load_config

log = logging.getLogger(__name__)

NUM_TRAIN, NUM_VAL = 480, 160


def run_demo(repo: Path, workdir: Path, shift: bool = True, overrides: list[str] | None = None) -> dict[str, object]:
    """Generate (or reuse) the synthetic set, train the demo config, evaluate, export; returns a summary."""
    from training.loop import train
    from training.synthetic import generate_dataset
    from training.workflows import evaluate_checkpoint, export_checkpoint

    started = time.perf_counter()
    data = workdir / "data"
    generate_dataset(data, NUM_TRAIN, NUM_VAL, seed=0)
    generated = time.perf_counter()
    run_dir = workdir / ("tsm" if shift else "tsn")
    cfg = load_config("demo", [
        f"data.train_list={data / 'train.list'}", f"data.valid_list={data / 'val.list'}",
        f"data.labels={data / 'labels.txt'}", f"data.data_prefix={data}", f"train.output_dir={run_dir}",
        f"model.shift={'true' if shift else 'false'}", f"name={'tsm-motion' if shift else 'tsn-motion'}",
        *(overrides or []),
    ])
    result = train(cfg, validate=True)
    trained = time.perf_counter()
    best = result.best_checkpoint or result.latest_checkpoint
    evaluation = evaluate_checkpoint(cfg, best, out_dir=run_dir)
    folder = export_checkpoint(cfg, best, repo, metrics=evaluation.as_dict())
    summary: dict[str, object] = {
        "model": cfg.name, "shift": shift, "published": str(folder), "val_top1": evaluation.top1,
        "val_top5": evaluation.top5, "val_clips": evaluation.count, "epochs": cfg.train.epochs,
        "seconds_data": round(generated - started, 1), "seconds_train": round(trained - generated, 1),
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("demo done: %s", summary)
    return summary


def published_models(repo: Path) -> list[Manifest]:
    """Manifests of every readable published version in ``repo``."""
    found: list[Manifest] = []
    for name, versions in scan_repository(repo).items():
        for version in versions:
            try:
                found.append(Manifest.read(repo / name / str(version)))
            except (OSError, ValueError) as exc:
                log.warning("ignoring %s/%s/%d: %s", repo, name, version, exc)
    return found


def ensure_model(repo: Path, workdir: Path = Path("runs/demo")) -> None:
    """Build the demo model only when ``repo`` has no usable model (a second start is instant)."""
    present = published_models(repo)
    if present:
        names = ", ".join(sorted({f"{m.name} v{m.version}" for m in present}))
        print(f"model_repo already holds {names}; not rebuilding")
        return
    print("model_repo is empty: building the demo model (synthetic data, training, export)...")
    run_demo(repo, workdir)
