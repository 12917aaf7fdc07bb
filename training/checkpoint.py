"""Checkpoints: PaddleVideo-compatible ``.pdparams`` state dicts plus a JSON sidecar (config, epoch, metrics)."""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paddle

from service.contract.manifest import read_label_list
from training.config import Config
from training.tsm import Recognizer2D, build_tsm
from training.tsm.shift import ShiftImpl

log = logging.getLogger(__name__)


def build_model(cfg: Config, shift_impl: ShiftImpl = "slice") -> Recognizer2D:
    """The network a config describes (fresh weights). ``shift_impl`` changes speed only, never a result:
    "slice" for what is evaluated and exported, "fused" for training (``training.loop.training_shift``)."""
    m = cfg.model
    return build_tsm(m.depth, m.num_classes, m.num_seg, m.shift, m.data_format, m.base_width, m.drop_ratio,
                     shift_impl=shift_impl)


def labels_of(cfg: Config) -> list[str]:
    """Class names from ``data.labels``, or ``class_<i>`` when the config names no file."""
    if cfg.data.labels:
        labels = read_label_list(Path(cfg.data.labels))
        if len(labels) != cfg.model.num_classes:
            raise ValueError(f"{cfg.data.labels} has {len(labels)} labels, model.num_classes is "
                             f"{cfg.model.num_classes}")
        return labels
    return [f"class_{i}" for i in range(cfg.model.num_classes)]


def save_checkpoint(prefix: Path, model: paddle.nn.Layer, cfg: Config, epoch: int,
                    metrics: dict[str, float], optimizer: paddle.optimizer.Optimizer | None = None) -> Path:
    """Write ``<prefix>.pdparams`` (+ ``.pdopt``) and ``<prefix>.json``; returns the params path.

    All files are first written in full under temporary names, then renamed over the old ones, the sidecar
    last: a run killed while saving keeps its previous checkpoint. Only a kill between the renames
    (microseconds apart, against the seconds a save takes) can leave new weights beside the previous sidecar,
    whose epoch is then one behind: a resume repeats an epoch, never claims one that was not trained.
    """
    prefix.parent.mkdir(parents=True, exist_ok=True)
    layer = model._layers if isinstance(model, paddle.DataParallel) else model
    params = Path(str(prefix) + ".pdparams")
    # The class names too: an export or evaluation with another label list of the same length would misname
    # every class, and the config records only the list's path.
    meta = {"epoch": epoch, "metrics": metrics, "config": cfg.model_dump(mode="json"), "labels": labels_of(cfg)}
    writes: list[tuple[Path, Callable[[Path], object]]] = [
        (params, lambda tmp: paddle.save(layer.state_dict(), str(tmp)))]
    if optimizer is not None:
        writes.append((Path(str(prefix) + ".pdopt"), lambda tmp: paddle.save(optimizer.state_dict(), str(tmp))))
    writes.append((Path(str(prefix) + ".json"), lambda tmp: tmp.write_text(to_json(meta, indent=2) + "\n")))
    staged: list[tuple[Path, Path]] = []
    try:
        try:
            for path, write in writes:
                staged.append((_write_temporary(path, write), path))
        except OSError as exc:  # e.g. a full disk: nothing was renamed yet
            previous = f"the previous {params.name} is intact" if params.exists() else f"no {params.name} was saved"
            raise os_error(exc, f"could not save checkpoint {prefix} ({exc.strerror or exc}); {previous}") from exc
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:  # a full disk, a kill, a failed rename: the written parts would keep a full disk full
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)  # gone already where renamed (the sidecar, renamed last, stays old)
    return params


def os_error(exc: OSError, message: str) -> OSError:
    """``message`` as an OSError of ``exc``'s errno (without one, ``[Errno None]`` would lead the text)."""
    return OSError(exc.errno, message) if exc.errno is not None else OSError(message)


def to_json(obj: Any, indent: int | None = None) -> str:
    """JSON that strict parsers (jq, JavaScript, pydantic) read: a NaN or infinite number (a diverged loss)
    becomes null, where ``json.dumps`` would write the non-standard ``NaN``."""
    return json.dumps(_nulls(obj), indent=indent, allow_nan=False)


def _nulls(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nulls(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nulls(v) for v in obj]
    return obj


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` into ``<path>.tmp`` in the same folder (a rename is atomic only within one file system),
    flush it to disk, then rename it over ``path``."""
    os.replace(_write_temporary(path, write), path)


def _write_temporary(path: Path, write: Callable[[Path], object]) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
    except BaseException:  # a failed or interrupted write leaves no partial file behind
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def read_meta(params: Path) -> dict[str, Any]:
    """The JSON sidecar of a checkpoint, or {} for a foreign (e.g. PaddleVideo) checkpoint."""
    sidecar = params.with_suffix(".json")
    if not sidecar.exists():
        return {}
    try:
        meta = json.loads(sidecar.read_text())
    except ValueError as exc:  # a torn or emptied sidecar: json's own text names no file
        raise ValueError(f"{sidecar} is not a checkpoint's JSON sidecar ({exc}): it is damaged; resume from "
                         "another checkpoint (epoch_<n>.pdparams)") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{sidecar} is not a checkpoint's JSON sidecar (it holds no object)")
    return meta


def load_weights(model: paddle.nn.Layer, params: Path, backbone_only: bool = False) -> tuple[int, list[str]]:
    """Load a state dict; returns (tensors loaded, keys of the model left untouched).

    A full load (evaluate, export, resume) takes the file only if it is exactly this network: a
    ValueError names what differs, as a partial load would leave random layers in the result.
    ``backbone_only`` follows PaddleVideo's ``load_ckpt`` for pretrained weights: for each
    backbone key K take ``file[K]`` else ``file['backbone.'+K]`` (ImageNet files have no prefix),
    skipping what is missing or has another shape.
    """
    if params.is_dir():  # paddle.load's own error here is a C++ deserialisation failure
        raise ValueError(f"{params} is a folder: give a checkpoint file, e.g. {params / 'best.pdparams'}")
    if backbone_only:
        require_pretrained(params)
    else:
        require_checkpoint(params)
    state = load_state_file(params)
    if not isinstance(state, dict):
        raise ValueError(f"{params}: not a state dict (a .pdparams file of a TSM/ResNet network)")
    if backbone_only:
        return _load_backbone(model, params, state)
    _check_recorded_network(model, params)
    _check_state_dict(model, params, state)
    model.set_state_dict(state)
    return len(state), []


def load_state_file(path: Path) -> Any:
    """``paddle.load``, with a zero-byte or cut file named: pickle's own words ("Ran out of input") name none."""
    try:
        return paddle.load(str(path))
    except (EOFError, pickle.UnpicklingError) as exc:
        fix = "delete it to resume with a fresh optimiser" if path.suffix == ".pdopt" else "use another checkpoint"
        raise ValueError(f"{path} is damaged ({type(exc).__name__}: {exc}); {fix}") from exc


# Where the README says to download the shipped configs' pretrained weights.
DOWNLOAD_SECTION = "README.md, Training, 'Kinetics-400 / UCF-101 with the seed's recipes'"


def require_pretrained(params: Path) -> None:
    """Paddle's own error for a missing file names neither the setting nor where the file comes from."""
    if not params.exists():
        raise FileNotFoundError(f"model.pretrained {params} does not exist: download it as {DOWNLOAD_SECTION} "
                                "says, or train from scratch with -o model.pretrained=")


def require_checkpoint(params: Path) -> None:
    """One sentence for a missing checkpoint, whichever job reads it first (evaluate reads its sidecar,
    export hashes it, before either loads the weights)."""
    if not params.exists():
        raise FileNotFoundError(f"checkpoint {params} does not exist: give the .pdparams file of a run (its "
                                "train.output_dir holds best.pdparams and latest.pdparams)")


def _load_backbone(model: paddle.nn.Layer, params: Path, state: dict[str, Any]) -> tuple[int, list[str]]:
    own = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    chosen: dict[str, Any] = {}
    for key, tensor in own.items():
        value = state.get(key[len("backbone."):], state.get(key))
        if value is not None and list(value.shape) == list(tensor.shape):
            chosen[key] = value
    missing = [k for k in own if k not in chosen]
    if not chosen:
        raise ValueError(f"{params}: no tensor matches the model (is it a TSM/ResNet checkpoint of this depth?)")
    model.set_state_dict(chosen)
    if missing:
        log.warning("%s: %d model tensors not in the file, left as initialised (e.g. %s)",
                    params, len(missing), missing[0])
    return len(chosen), missing


# The model fields that decide what the weights compute. ``data_format`` is only the memory layout
# (an NHWC run exports as NCHW) and ``drop_ratio`` acts in training only, so those may differ.
NETWORK_FIELDS = ("depth", "num_classes", "base_width", "shift", "num_seg")


def _check_recorded_network(model: paddle.nn.Layer, params: Path) -> None:
    """Compare the network the sidecar records with the one built (``build_tsm`` sets ``model.arch``).

    Shift and segment count leave the state dict unchanged, so only the sidecar can tell them apart.
    """
    recorded = read_meta(params).get("config", {}).get("model", {})
    built: dict[str, Any] = getattr(model, "arch", {})
    for field in NETWORK_FIELDS:
        if field in recorded and field in built and recorded[field] != built[field]:
            raise ValueError(f"{params} was trained with model.{field}={recorded[field]}, but the config has "
                             f"model.{field}={built[field]}: use the config it was trained with (its "
                             f"{params.with_suffix('.json').name} records it) or -o model.{field}={recorded[field]}")


PREPROCESSING_FIELDS = ("short_side", "crop_size", "mean", "std")


def check_recorded_preprocessing(cfg: Config, params: Path) -> None:
    """Refuse to evaluate or export ``params`` with other test-time preprocessing than it was trained with
    (its sidecar records the config): the manifest would tell the service to feed it inputs it never saw.
    Both jobs call this first, so a missing checkpoint is named here, the same way for both."""
    require_checkpoint(params)
    recorded = read_meta(params).get("config", {}).get("data", {})
    for field in PREPROCESSING_FIELDS:
        ours, theirs = json.loads(json.dumps(getattr(cfg.data, field))), recorded.get(field)  # tuples as lists
        if theirs is not None and theirs != ours:
            raise ValueError(f"{params} was trained with data.{field}={theirs}, but the config has "
                             f"data.{field}={ours}: use the config it was trained with (its "
                             f"{params.with_suffix('.json').name} records it) or "
                             f"-o 'data.{field}={json.dumps(theirs)}'")


def check_recorded_labels(cfg: Config, params: Path) -> None:
    """Refuse to evaluate or export ``params`` under other class names than it was trained with (checkpoints
    from before the sidecar recorded them are not checked)."""
    meta = read_meta(params)
    recorded, ours = meta.get("labels"), labels_of(cfg)
    if recorded is None or recorded == ours or len(recorded) != len(ours):  # a class count: the network's check
        return
    i = next(i for i, (a, b) in enumerate(zip(recorded, ours, strict=True)) if a != b)
    given = cfg.data.labels or "no data.labels (class_<i>)"
    trained = meta.get("config", {}).get("data", {}).get("labels") or "'' (it had none)"
    raise ValueError(f"{params} was trained with other class names than {given} gives (class {i}: "
                     f"{recorded[i]!r} against {ours[i]!r}): use the label list it was trained with, "
                     f"-o data.labels={trained}")


def check_finite_weights(model: paddle.nn.Layer, params: Path) -> None:
    """A diverged run's weights (NaN or infinite) would answer every request with the same garbage."""
    bad = [k for k, v in model.state_dict().items() if not bool(paddle.isfinite(v).all())]
    if bad:
        raise ValueError(f"{params} holds non-finite weights ({_first(bad)}): the run diverged; export an "
                         "earlier checkpoint or train with a lower learning rate")


def _check_state_dict(model: paddle.nn.Layer, params: Path, state: dict[str, Any]) -> None:
    own = model.state_dict()
    differences = {
        "missing from the file": [k for k in own if k not in state],
        "unexpected in the file": [k for k in state if k not in own],
        "with another shape": [f"{k}: file {list(state[k].shape)}, model {list(own[k].shape)}" for k in own
                               if k in state and list(state[k].shape) != list(own[k].shape)],
    }
    problems = [f"{len(keys)} {what} ({_first(keys)})" for what, keys in differences.items() if keys]
    if problems:
        arch = getattr(model, "arch", {})
        network = ", ".join(f"{f}={arch[f]}" for f in NETWORK_FIELDS if f in arch) or type(model).__name__
        raise ValueError(f"{params} is not a checkpoint of this config's network ({network}): {'; '.join(problems)}")


def _first(keys: list[str], shown: int = 3) -> str:
    more = f", ... {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more
