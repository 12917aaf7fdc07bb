"""``python -m training <command>``: dataset | extract-frames | train | evaluate | evaluate-model | export |
import-paddlevideo | demo | ensure-model."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import ValidationError

from service.contract.manifest import Preprocessing, read_label_list
from service.logs import ignore_paddle_build_warnings
from training.cli_args import PADDLEVIDEO_PIPELINES, build_parser
from training.interrupts import DataLoaderDiedError, Terminated, TrainingInterrupted, on_sigterm
from training.recipes import RECIPES

if TYPE_CHECKING:
    from service.settings import ServiceSettings
    from training.config import Config

def _labels_for(cfg_labels: str, num_classes: int) -> list[str]:
    return read_label_list(Path(cfg_labels)) if cfg_labels else [f"class_{i}" for i in range(num_classes)]


def _import_kind(source: Path) -> str:
    """The kind of PaddleVideo file, "checkpoint" or "export", from its suffix: others crash inside Paddle."""
    if source.suffix == ".pdparams":
        kind = "checkpoint"
    elif source.suffix in (".json", ".pdmodel"):
        kind = "export"
    else:
        raise ValueError(f"{source}: give a PaddleVideo checkpoint (.pdparams) or the model file of an export "
                         f"(.json or .pdmodel, with its .pdiparams beside it), not a {source.suffix or 'suffix-less'} "
                         "file")
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found")
    return kind


def _import(args: argparse.Namespace) -> Path:
    from training.importers import import_checkpoint, import_inference_model

    kind = _import_kind(args.source)
    labels = read_label_list(args.labels)
    sampling, fixed_ratio = _import_pipeline(args)
    spec = Preprocessing(num_seg=args.num_seg, sampling=sampling, fixed_ratio=fixed_ratio,
                         short_side=args.short_side, crop_size=args.crop_size)
    importer = import_checkpoint if kind == "checkpoint" else import_inference_model
    return importer(args.source, labels, args.repo, args.name, spec, args.dataset, shift=not args.tsn)


def _import_pipeline(args: argparse.Namespace) -> tuple[str, bool]:
    """``--pipeline``, or ``--sampling``/``--fixed-ratio`` on their own (warned about when the mix is neither of
    PaddleVideo's pipelines: the model would be served with preprocessing it was never evaluated with)."""
    sampling, fixed_ratio = PADDLEVIDEO_PIPELINES[args.pipeline or "test"]
    if args.sampling is None and args.fixed_ratio is None:
        return sampling, fixed_ratio
    if args.pipeline:
        raise ValueError("give --pipeline, or --sampling and --fixed-ratio, not both")
    chosen = (args.sampling or sampling, bool(args.fixed_ratio))
    if chosen not in PADDLEVIDEO_PIPELINES.values():
        logging.getLogger("training").warning(
            "--sampling %s with%s --fixed-ratio is neither PaddleVideo's test pipeline nor tools/predict.py's "
            "(--pipeline test or --pipeline predict give one of them)", chosen[0], "" if chosen[1] else "out")
    return chosen


def _evaluate_model(args: argparse.Namespace) -> int:
    from training.published import ListSource, evaluate_published

    source = ListSource(args.list, args.prefix, args.format, args.suffix)
    result = evaluate_published(args.model, source, args.out, max(args.workers, 0), _service_settings())
    print(f"top-1 {result.top1:.4f}  top-5 {result.top5:.4f}  ({result.count} clips, {len(result.skipped)} "
          f"skipped); confusion matrix: {result.confusion_png}, figures: "
          f"{result.confusion_png.with_name('evaluation.json')}")
    return 0


def _service_settings() -> ServiceSettings:
    """The service's settings from the environment, refused and warned about as ``tsm-serve`` does (a misspelt
    ``TSM_`` variable would silently score with its default)."""
    from service.cli import load_settings
    from service.settings import unknown_variables

    for warning in unknown_variables(os.environ):
        logging.getLogger("training").warning("%s", warning)
    return load_settings("evaluate-model")  # SettingsRefusedError is a ValueError: one message, exit 2


def _require_train_lists(cfg: Config, validate: bool) -> None:
    """Name a missing list up front: an empty one would be read as the folder '.' (IsADirectoryError),
    and an empty valid_list would silently skip the validation that --validate asked for."""
    needed = {"data.train_list": cfg.data.train_list}
    if validate:
        needed["data.valid_list"] = cfg.data.valid_list
    for key, value in needed.items():
        if not value:
            raise ValueError(f"{key} is not set in config {cfg.name!r}: give it with -o {key}=FILE")


def _explicit_output_dir(overrides: list[str]) -> str | None:
    """The last ``-o train.output_dir=...`` given, as load_config applies it (None: the config file's)."""
    given = [raw for key, _, raw in (o.partition("=") for o in overrides) if key.strip() == "train.output_dir"]
    return given[-1] if given else None


def _check_resume_folder(resume: Path | None, overrides: list[str]) -> None:
    """A resumed run continues in its checkpoint's folder (training.loop.train): an output folder asked for
    explicitly that is another one would mix two runs there, or split one run over two folders."""
    asked = _explicit_output_dir(overrides)
    if resume is None or asked is None or Path(asked).resolve() == resume.parent.resolve():
        return
    raise ValueError(f"--resume {resume} continues the run in {resume.parent}, but -o train.output_dir={asked} "
                     f"names another folder: drop that override to continue the run where it is")


def _terminated(signum: int) -> None:
    raise Terminated(signum)  # a KeyboardInterrupt: train() names the checkpoint to resume from


def _resume_command(argv: list[str], checkpoint: Path) -> str:
    """The command line that was run, resuming from ``checkpoint`` (an earlier ``--resume`` replaced)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip or arg.startswith("--resume="):
            skip = False
            continue
        skip = arg == "--resume"
        if not skip:
            kept.append(arg)
    return shlex.join(["python", "-m", "training", *kept, "--resume", str(checkpoint)])


def interrupted_message(stop: TrainingInterrupted | DataLoaderDiedError, argv: list[str]) -> str:
    """What a stopped run says: why, the epoch it was in, the checkpoint it left and how to resume from it."""
    what = f"interrupted during epoch {stop.epoch}"
    if isinstance(stop, DataLoaderDiedError):  # SIGKILL is most often the OOM killer's
        hint = "; out of memory? lower data.num_workers or data.batch_size" if "Killed" in stop.reason else \
            "; if it was killed: out of memory? lower data.num_workers or data.batch_size"
        what = f"data loading failed during epoch {stop.epoch} ({stop.reason}{hint})"
    if stop.saved is None:
        return f"{what}: no epoch had finished, so nothing was saved"
    return (f"{what}: the last saved checkpoint is {stop.saved} (epoch {stop.saved_epoch}); resume with:\n  "
            f"{_resume_command(argv, stop.saved)}")


def run(args: argparse.Namespace) -> int:
    # Imports are per command: `ensure-model` with a model present must not pay for Paddle.
    if args.command == "ensure-model":
        from training.demo import ensure_model

        ensure_model(args.repo)
        return 0
    if args.command == "dataset":
        from training.synthetic import generate_dataset

        train_list, val_list = generate_dataset(Path(args.out), args.train, args.val, seed=args.seed)
        print(f"wrote {train_list} and {val_list}")
        return 0
    if args.command == "extract-frames":
        from training.frames import extract_frames

        out = extract_frames(args.list, args.out, args.prefix, args.short_side, args.workers, args.suffix)
        print(f"wrote {out}: pass it as data.train_list or data.valid_list, with -o data.format=frames "
              f"-o data.data_prefix={args.out}")
        return 0
    if args.command == "demo":
        from training.demo import run_demo

        run_demo(args.repo, args.workdir, shift=not args.tsn, overrides=args.override, procs=args.procs,
                 recipe=RECIPES[args.recipe])
        return 0
    if args.command == "evaluate-model":
        return _evaluate_model(args)
    if args.command == "import-paddlevideo":
        print(f"published {_import(args)}")
        return 0

    from training.config import load_config

    overrides = list(args.override) + (["train.amp=true"] if getattr(args, "amp", False) else [])
    cfg = load_config(args.config, overrides)
    if args.command == "train":
        from training.loop import train

        _require_train_lists(cfg, args.validate)
        _check_resume_folder(args.resume, args.override)
        with on_sigterm(_terminated):  # timeout or docker stop end the run as Ctrl+C does: one message
            result = train(cfg, validate=args.validate, resume=args.resume)
        best = f"best {result.best_metrics} -> {result.best_checkpoint}; " if result.best_checkpoint else ""
        print(f"{best}latest -> {result.latest_checkpoint}")
        return 0
    if args.command == "evaluate":
        from training.workflows import evaluate_checkpoint

        result = evaluate_checkpoint(cfg, args.checkpoint, args.list, args.out)
        print(f"top-1 {result.top1:.4f}  top-5 {result.top5:.4f}  ({result.count} clips, "
              f"{len(result.skipped)} skipped); confusion matrix: {result.confusion_png}, figures: "
              f"{result.confusion_png.with_name('evaluation.json')}")
        return 0
    if args.command == "export":
        from training.workflows import export_checkpoint

        folder = export_checkpoint(cfg, args.checkpoint, args.repo, args.name or cfg.name)
        print(f"published {folder}")
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ignore_paddle_build_warnings()
    try:
        return run(args)
    except KeyboardInterrupt as exc:  # Ctrl+C, or SIGTERM while training: a message, not an 81-line traceback
        return _interrupted(exc, argv)
    except DataLoaderDiedError as exc:
        logging.getLogger("training").error("%s", interrupted_message(exc, argv))
        return 1
    except yaml.YAMLError as exc:  # config.py parses text, so the file's name is not in the error
        logging.getLogger("training").error("invalid YAML in config %s or an -o override: %s",
                                            getattr(args, "config", "?"), exc)
        return 2
    except ValidationError as exc:  # a ValueError too, but pydantic's text carries a URL for every field
        logging.getLogger("training").error("%s", validation_message(exc))
        return 2
    except (ValueError, OSError) as exc:  # the user's input is wrong: a message, not a traceback
        logging.getLogger("training").error("%s", exc)
        return 2


def _interrupted(exc: KeyboardInterrupt, argv: list[str]) -> int:
    """Say where an interrupted command stopped; the exit status a shell gives the signal (130, 143)."""
    # Before or after the epochs, or another command: nothing to resume from.
    message = interrupted_message(exc, argv) if isinstance(exc, TrainingInterrupted) else "interrupted"
    logging.getLogger("training").error("%s", message)
    return 128 + int(getattr(exc, "signum", signal.SIGINT))  # Terminated and TrainingInterrupted carry theirs


def validation_message(exc: ValidationError) -> str:
    """One line a refused field: its dotted key (as ``-o`` takes it), why, and the value given."""
    what = "the config" if exc.title == "Config" else exc.title
    lines = [f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']} (got {e['input']!r})"
             for e in exc.errors(include_url=False)]
    return f"{what} is refused:\n  " + "\n  ".join(lines)


if __name__ == "__main__":
    sys.exit(main())
