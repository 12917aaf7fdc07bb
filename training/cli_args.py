"""The command line's parsers: one subcommand each, with its options and help."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from training.recipes import QUICK, RECIPES

COMMANDS = ("dataset | extract-frames | train | evaluate | evaluate-model | export | import-paddlevideo | demo | "
            "ensure-model")
REPO_HELP = "model repository (default: $TSM_MODEL_REPO, else model_repo)"
# PaddleVideo's two ways of preprocessing a video for TSM (sampling rule, fixed_ratio): its test pipeline
# (tools/main.py --test) and tools/predict.py's inference helper.
PADDLEVIDEO_PIPELINES = {"test": ("paddlevideo_test", False), "predict": ("paddlevideo_predict", True)}


def default_repo() -> Path:
    """The service's model repository setting when set (the images set it to /models), else ./model_repo."""
    return Path(os.environ.get("TSM_MODEL_REPO") or "model_repo")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="YAML file or a name in training/configs/")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. -o train.epochs=5 -o model.data_format=NHWC; values are "
                   "YAML, except that text keys take the text as given (-o model.pretrained= means none)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=f"python -m training <command>: {COMMANDS}")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: %(default)s")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("dataset", help="generate the synthetic motion dataset (real H.264 MP4s + list files)")
    p.add_argument("--out", default="runs/demo/data", help="folder for the videos and list files (default: "
                   "%(default)s)")
    p.add_argument("--train", type=count, default=640, help="training clips (default: %(default)s; 0 for a test "
                   "set of --val clips)")
    p.add_argument("--val", type=positive, default=160, help="validation clips (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the clips' seed (default: %(default)s): a clip is the same "
                   "for the same seed, split and index, so a held-out test set needs another seed (the demo's "
                   "is 100)")

    p = sub.add_parser("extract-frames", help="decode a video list into PaddleVideo frame folders + a frames list")
    p.add_argument("list", type=Path, help="a video list file (<path> <label> per line)")
    p.add_argument("--out", type=Path, required=True, help="folder for the frame folders and the frames list")
    p.add_argument("--prefix", default="", help="joined in front of each video path (data.data_prefix)")
    p.add_argument("--suffix", default="", help="appended to each video path (data.suffix, e.g. UCF-101's .avi); "
                   "the frame folders are named as the list names the videos, without it")
    p.add_argument("--short-side", type=positive, help="scale every frame to this short side (default: keep the "
                   "size)")
    p.add_argument("--workers", type=positive, default=2, help="decoding processes (default: %(default)s)")

    p = sub.add_parser("train", help="train a config (data-parallel under paddle.distributed.launch)")
    _config_args(p)
    p.add_argument("--validate", action="store_true", help="evaluate each epoch and keep the best checkpoint")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    p.add_argument("--resume", type=Path, help="a latest.pdparams to continue from")

    p = sub.add_parser("evaluate", help="top-1/top-5 and a confusion-matrix PNG on a list file")
    _config_args(p)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--list", help="list file (default: data.valid_list)")
    p.add_argument("--out", type=Path, help="folder for confusion_matrix.png and evaluation.json (default: the "
                                            "checkpoint's folder)")

    p = sub.add_parser("evaluate-model", help="top-1/top-5 of a published model version on a list, decoded, "
                       "preprocessed and run as the service serves it (its TSM_* settings choose the backend)")
    p.add_argument("model", type=Path, help="a version folder, model_repo/<name>/<version> (model_repo/<name>: "
                   "its highest version)")
    p.add_argument("--list", type=Path, required=True, help="list file: 'path label' lines (--format frames: "
                   "'folder num_frames label'), labels numbered in the manifest's order")
    p.add_argument("--prefix", default="", help="joined in front of each list path (data.data_prefix)")
    p.add_argument("--format", choices=["videos", "frames"], default="videos")
    p.add_argument("--suffix", default="", help="as data.suffix: appended to each video path; for frames, the "
                   "frame files' pattern (default img_{:05}.jpg)")
    p.add_argument("--out", type=Path, help="folder for confusion_matrix.png and evaluation.json (default: "
                   "runs/evaluate/<name>/<version>; never the repository)")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (default: %(default)s; 0: none)")

    p = sub.add_parser("export", help="publish a checkpoint as an inference model into model_repo")
    _config_args(p)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--repo", type=Path, default=default_repo(), help=REPO_HELP)
    p.add_argument("--name", help="model name (default: the config's name)")

    p = sub.add_parser("import-paddlevideo", help="publish a PaddleVideo checkpoint or export into model_repo")
    p.add_argument("source", type=Path, help="TSM_k400.pdparams (a checkpoint), or TSM.json / TSM.pdmodel of an "
                   "export (its .pdiparams must lie beside it)")
    p.add_argument("--tsn", action="store_true", help="the network is a TSN (no temporal shift). A TSN checkpoint "
                   "has exactly TSM's weights, so they cannot tell TSN from TSM: without --tsn it is served as TSM")
    p.add_argument("--labels", type=Path, default=Path(__file__).parent / "labels" / "kinetics400_label_list.txt",
                   help="label list, one class a line in the model's order (default: the Kinetics-400 list)")
    p.add_argument("--name", default="tsm-k400", help="model name in the repository (default: %(default)s)")
    p.add_argument("--repo", type=Path, default=default_repo(), help=REPO_HELP)
    p.add_argument("--dataset", default="Kinetics-400", help="recorded in the manifest (default: %(default)s)")
    p.add_argument("--num-seg", type=positive, default=8, help="segments the model was trained with "
                   "(PaddleVideo's TSM configs: 8)")
    p.add_argument("--short-side", type=positive, default=256, help="test-time resize of the short side "
                   "(default: %(default)s, PaddleVideo's)")
    p.add_argument("--crop-size", type=positive, default=224, help="test-time centre crop (default: %(default)s)")
    p.add_argument("--pipeline", choices=sorted(PADDLEVIDEO_PIPELINES), help="which PaddleVideo preprocessing to "
                   "serve with: test (tools/main.py --test, behind the published accuracy; the default) or predict "
                   "(tools/predict.py: other frames, and a resize to 256x341 whatever the aspect). Sets both options "
                   "below")
    p.add_argument("--sampling", choices=["paddlevideo_test", "paddlevideo_predict"],
                   help="the frames' rule alone (default: the pipeline's)")
    p.add_argument("--fixed-ratio", action="store_const", const=True, help="predict.py's resize to 256x341 alone")

    p = sub.add_parser("demo", help="synthetic data -> train -> evaluate -> export (about 10 min on 2 cores)")
    p.add_argument("--repo", type=Path, default=default_repo(), help=REPO_HELP)
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"),
                   help="where the generated sets, extracted frames, runs and log go (default runs/demo; a set "
                        "already made there is reused)")
    p.add_argument("--tsn", action="store_true", help="train the same network without the shift (baseline)")
    p.add_argument("--procs", type=positive, help="data-parallel training processes (default: a CPU core each, "
                   "at most 2; 1 on a GPU); the global batch stays 16")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=QUICK.name,
                   help="quick: 8-9 min on 2 cores, 65-77%% top-1 on the test clips; long: a rotation stage, 4x "
                   "the clips, 8x the steps, then 8 segments at 96 px: 64-74 min on 2 cores, 95-97%% "
                   "(training/REPORT.md)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser("ensure-model", help="run the demo only if model_repo holds no model")
    p.add_argument("--repo", type=Path, default=default_repo(), help=REPO_HELP)
    return parser


def count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value
