"""Config loading: how a config is found, how override text becomes a value, and the errors for wrong input."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.config import CONFIG_DIR, PACKAGE_DIR, _is_text, load_config


def test_a_config_is_a_path_a_name_or_a_file_name_in_the_configs_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("name: mine\n")
    assert load_config(tmp_path / "mine.yaml").name == "mine"
    assert load_config("tiny").name == load_config("tiny.yaml").name == "tiny"


def test_an_unknown_config_name_lists_the_names_there_are() -> None:
    with pytest.raises(FileNotFoundError, match="no config file or name 'nope'") as error:
        load_config("nope")
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert "tiny" in names and all(name in str(error.value) for name in names)


@pytest.mark.parametrize("overrides", [[], ["train.epochs=1"]])
def test_a_config_that_is_not_a_mapping_is_refused_with_or_without_overrides(tmp_path: Path,
                                                                            overrides: list[str]) -> None:
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n")
    with pytest.raises(ValueError, match=r"list\.yaml must be a mapping"):
        load_config(listed, overrides)


@pytest.mark.parametrize("path", [None, "tiny"])  # tiny sets train.epochs; the defaults alone do not
def test_an_override_below_a_setting_names_the_setting(path: str | None) -> None:
    with pytest.raises(ValueError, match=r"'train\.epochs\.x': train\.epochs is a setting, not a section"):
        load_config(path, ["train.epochs.x=1"])


def test_an_override_below_a_non_mapping_in_the_file_names_the_key(tmp_path: Path) -> None:
    odd = tmp_path / "odd.yaml"
    odd.write_text("model: [a]\n")
    with pytest.raises(ValueError, match=r"'model\.depth': model is not a section in the config file"):
        load_config(odd, ["model.depth=18"])


def test_text_settings_take_the_override_text_as_given_and_others_parse_it_as_yaml() -> None:
    cfg = load_config("tiny", ["model.pretrained=", "name=123", "data.labels=on", "data.data_prefix=/d/a: b",
                               "train.epochs=3", "train.amp=on", "optimizer.values=[0.1, 0.01]",
                               "optimizer.boundaries=[5]"])
    assert (cfg.train.epochs, cfg.train.amp, cfg.optimizer.values) == (3, True, [0.1, 0.01])
    assert (cfg.model.pretrained, cfg.name, cfg.data.labels, cfg.data.data_prefix) == ("", "123", "on", "/d/a: b")
    assert cfg.model.pretrained == load_config("tiny").model.pretrained  # empty is the config's own "none"
    quoted = load_config("tiny", ['model.pretrained=""', "name='a b'"])
    assert (quoted.model.pretrained, quoted.name) == ("", "a b")


def test_optional_text_counts_as_text() -> None:
    assert _is_text(str) and _is_text(str | None)
    assert not _is_text(int) and not _is_text(list[str]) and not _is_text(None)


def test_the_cli_names_each_refused_field_with_its_value_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    from training.cli import main

    code = main(["train", "-c", "tiny", "-o", "train.epochs=abc", "-o", "data.bogus=1"])
    assert code == 2
    assert "the config is refused:" in caplog.text
    assert "train.epochs: Input should be a valid integer, unable to parse string as an integer (got 'abc')" \
        in caplog.text
    assert "data.bogus: Extra inputs are not permitted (got 1)" in caplog.text
    assert "pydantic.dev" not in caplog.text and "[type=" not in caplog.text


@pytest.mark.parametrize(("overrides", "refusal"), [
    (["data.crop_size=256", "data.short_side=224"],
     r"data\.crop_size 256 is larger than data\.short_side 224: a crop must fit"),
    (["data.scales=[1.0, 1.2]"], r"data\.scales \[1\.0, 1\.2\] must be one or more fractions in \(0, 1\]"),
    (["data.scales=[0.0]"], r"data\.scales \[0\.0\] must be"),
    (["data.scales=[]"], r"data\.scales \[\] must be"),
    (["data.std=[0.2, 0.0, 0.2]"], r"data\.std \[0\.2, 0\.0, 0\.2\] must be positive"),
])
def test_impossible_crops_and_normalisation_are_refused_at_load(overrides: list[str], refusal: str) -> None:
    with pytest.raises(ValueError, match=refusal):
        load_config("tiny", overrides)


@pytest.mark.parametrize("override", ["data.short_side=4", "data.crop_size=5000", "model.num_seg=65"])
def test_sizes_the_manifest_refuses_are_refused_at_load(override: str) -> None:
    with pytest.raises(ValueError, match=override.split("=")[0].split(".")[1]):
        load_config("tiny", [override])


def test_a_crop_as_large_as_the_short_side_is_accepted() -> None:
    cfg = load_config("tiny", ["data.crop_size=40", "data.scales=[1.0]"])
    assert cfg.preprocessing().crop_size == cfg.data.short_side == 40


def test_a_shipped_label_list_is_found_from_any_working_directory(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from service.contract.manifest import read_label_list

    monkeypatch.chdir(tmp_path)
    labels = load_config("tsm_k400_frames").data.labels
    assert Path(labels) == PACKAGE_DIR / "labels" / "kinetics400_label_list.txt"
    assert len(read_label_list(Path(labels))) == 400


def test_a_label_list_in_the_working_directory_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "training" / "labels" / "kinetics400_label_list.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("a\n")
    monkeypatch.chdir(tmp_path)
    assert load_config("tsm_k400_frames").data.labels == "training/labels/kinetics400_label_list.txt"


@pytest.mark.parametrize("path", ["mine/labels.txt", "pyproject.toml", "training/../pyproject.toml"])
def test_other_relative_label_paths_stay_as_given(path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only files the package ships are looked up beside it: not the checkout's other files."""
    monkeypatch.chdir(tmp_path)
    assert load_config("tiny", [f"data.labels={path}"]).data.labels == path


def test_the_cli_finds_the_shipped_label_list_from_another_directory(tmp_path: Path) -> None:
    """The whole command, as a user runs it: the label list is read first, then the missing checkpoint named."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "training", "evaluate", "-c", "tsm_k400_frames", "--checkpoint",
                           "nope.pdparams"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(PACKAGE_DIR.parent)})
    assert done.returncode == 2
    assert "kinetics400_label_list" not in done.stderr
    assert "checkpoint nope.pdparams does not exist" in done.stderr


def test_for_frame_folders_suffix_is_the_frame_file_pattern_as_in_paddlevideo(tmp_path: Path) -> None:
    from service.decode_errors import DecodeError
    from training.data import read_frame_dir
    from training.listfile import Sample

    cfg = load_config("tiny", ["data.format=frames", "data.suffix=frame_{:04}.png"])
    assert load_config("tiny", ["data.format=frames"]).data.frame_pattern == "img_{:05}.jpg"
    assert load_config("tsm_k400_frames", []).data.frame_pattern == "img_{:05}.jpg"
    folder = tmp_path / "clip.mp4"  # PaddleVideo's frame folders keep the video's name
    folder.mkdir()
    for i in (1, 2):
        Image.fromarray(np.full((4, 6, 3), 40 * i, np.uint8)).save(folder / f"frame_{i:04}.png")
    frames = read_frame_dir(Sample(folder, 0, 2), [0, 1], cfg.data.frame_pattern)
    assert frames.shape == (2, 4, 6, 3) and frames[1].mean() == 80
    from training.data import ClipDataset  # the pattern is not appended to a frame list's folders

    (tmp_path / "frames.list").write_text("clip.mp4 2 0\n")
    listed = load_config("tiny", ["data.format=frames", "data.suffix=frame_{:04}.png", f"data.data_prefix={tmp_path}"])
    dataset = ClipDataset(listed, str(tmp_path / "frames.list"), train=False)
    assert dataset.samples[0].path == folder and dataset[0][3] == "" and dataset[0][0] is not None
    Image.fromarray(np.zeros((6, 4, 3), np.uint8)).save(folder / "frame_0003.png")
    with pytest.raises(DecodeError, match=r"frame frame_0003\.png is 4x6, frame frame_0001\.png 6x4: the frames of a "
                                          r"folder must have one size"):
        read_frame_dir(Sample(folder, 0, 3), [0, 2], cfg.data.frame_pattern)
    with pytest.raises(ValueError, match=r"data\.suffix '\.jpg' has no \{\} for the frame number"):
        load_config("tiny", ["data.format=frames", "data.suffix=.jpg"])
    assert load_config("tiny", ["data.suffix=.avi"]).data.suffix == ".avi"  # videos: appended, as before
