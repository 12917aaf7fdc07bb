"""A published model version scored on a labelled list, as the service serves it.

The manifest's sampling and preprocessing, the service's decoders, and the predictor that the service's settings
(``TSM_DEVICE``, ``TSM_BACKEND``, ...) choose for it: so an imported PaddleVideo model, or a version about to be
rolled out, is checked by the code that will answer for it, not by a training-side copy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from service.backends import check_listed_files, check_outputs, default_factory
from service.contract.manifest import MANIFEST_FILE, Manifest, is_number, list_versions
from service.model_version import PredictorFactory, PredictorLike
from service.settings import ServiceSettings
from training.config import Config, DataConfig, ModelConfig
from training.data import ClipDataset, make_loader
from training.evaluate import EvalResult, score_loader, write_evaluation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListSource:
    """Where the clips are: a PaddleVideo list file, read as ``data.format``/``data_prefix``/``suffix`` say."""

    list_file: Path
    data_prefix: str = ""
    format: str = "videos"
    suffix: str = ""


@dataclass(frozen=True)
class Opened:
    """The version that will be scored: its folder, number (the folder's, as the service serves it), manifest and
    predictor."""

    folder: Path
    version: int
    manifest: Manifest
    predictor: PredictorLike


def candidate_folders(path: Path, settings: ServiceSettings) -> list[Path]:
    """``path`` itself when it holds a manifest; for a model's folder (``model_repo/<name>``), the versions the
    service would try, in its order: the pinned one (``TSM_MODEL_VERSIONS``), else highest first."""
    if (path / MANIFEST_FILE).is_file():
        return [path]
    versions = list_versions(path)
    if not versions:
        raise FileNotFoundError(f"{path} is neither a published version (no {MANIFEST_FILE}) nor a model folder "
                                "with numbered versions: give model_repo/<name>/<version> or model_repo/<name>")
    pinned = settings.model_versions.get(path.name)
    if pinned is not None:
        if pinned not in versions:
            raise FileNotFoundError(f"{path.name} is pinned to version {pinned} (TSM_MODEL_VERSIONS), which {path} "
                                    f"does not hold (it holds {', '.join(map(str, versions))})")
        return [path / str(pinned)]
    return [path / str(v) for v in reversed(versions)]


def open_version(folder: Path, factory: PredictorFactory, batch_size: int) -> Opened:
    """The repository's checks before a version serves (manifest, listed files, outputs after a warm-up); a
    refusal is a ValueError naming the folder."""
    try:
        manifest = Manifest.read(folder)
        check_listed_files(folder, manifest)
        predictor = factory(folder, manifest)
        check_outputs(predictor.warm_up(2, batch_size), manifest)
    except Exception as exc:  # whatever Paddle or the manifest raise: the service refuses the version the same
        raise ValueError(f"{folder} cannot serve: {exc}") from exc
    version = int(folder.name) if is_number(folder.name) else manifest.version  # a version serves as its folder
    return Opened(folder, version, manifest, predictor)


def open_served(path: Path, settings: ServiceSettings, factory: PredictorFactory) -> Opened:
    """The version of ``path`` the service would serve: a refused one is skipped (with a warning) for the next
    lower, as the service falls back to its highest valid version."""
    candidates = candidate_folders(path, settings)
    for i, folder in enumerate(candidates):
        try:
            return open_version(folder, factory, settings.max_batch_size)
        except ValueError as exc:
            if i == len(candidates) - 1:
                raise
            log.warning("%s; the service would serve version %s instead: scoring that", exc, candidates[i + 1].name)
    raise AssertionError("no candidate")  # candidate_folders returns at least one


def evaluate_published(path: Path, source: ListSource, out_dir: Path | None = None, num_workers: int = 2,
                       settings: ServiceSettings | None = None,
                       factory: PredictorFactory | None = None) -> EvalResult:
    """Top-1/top-5 of the version at ``path`` (a model's folder: the version the service would serve) on
    ``source``; writes ``evaluation.json`` and the confusion matrix into ``out_dir`` (default
    ``runs/evaluate/<name>/<version>``: never into the repository, which servers watch). ``factory`` is a seam for
    tests; by default the service's, from ``settings``."""
    settings = settings or ServiceSettings()
    opened = open_served(path, settings, factory or default_factory(settings))
    manifest, version = opened.manifest, opened.version
    cfg = Config(name=manifest.name, model=ModelConfig(num_classes=manifest.num_classes,
                                                       num_seg=manifest.preprocessing.num_seg),
                 data=DataConfig(format=source.format, data_prefix=source.data_prefix, suffix=source.suffix,
                                 num_workers=num_workers))
    dataset = ClipDataset(cfg, str(source.list_file), train=False, spec=manifest.preprocessing)
    loader = make_loader(dataset, settings.max_batch_size, num_workers, shuffle=False)
    result = score_loader(opened.predictor.run, loader, manifest.num_classes, desc=f"{manifest.name} v{version}")
    if result.count == 0:
        raise ValueError(f"no clip of {source.list_file} could be read ({len(result.skipped)} skipped): "
                         f"check --prefix ({source.data_prefix or 'empty'}) and --format ({source.format}: 'videos' "
                         "lists 'path label', 'frames' lists 'folder num_frames label')")
    out = out_dir or Path("runs") / "evaluate" / manifest.name / str(version)
    choice = opened.predictor.choice
    write_evaluation(result, out, manifest.labels, f"{manifest.name} v{version}", {
        "model": str(opened.folder), "name": manifest.name, "version": version, "list": str(source.list_file),
        "backend": choice.backend, "device": choice.device, "precision": choice.precision,
        "published_metrics": manifest.metrics})
    log.info("evaluated %s (%s on %s): top-1 %.4f, top-5 %.4f on %d clips", opened.folder, choice.backend,
             choice.device, result.top1, result.top5, result.count)
    return result

