"""The manifest schema: round trip, consistency checks and label lists."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.contract.manifest import (
    SCHEMA_VERSION,
    Manifest,
    ModelIO,
    Preprocessing,
    is_valid_name,
    read_label_list,
)

LABELS = Path(__file__).parents[2] / "training" / "labels" / "kinetics400_label_list.txt"


def _manifest(**kw: object) -> Manifest:
    base: dict[str, object] = {"name": "demo", "version": 1, "labels": ["a", "b"], "preprocessing": Preprocessing()}
    base.update(kw)
    return Manifest(**base)  # type: ignore[arg-type]


def test_round_trip(tmp_path: Path) -> None:
    m = _manifest(metrics={"top1": 0.9})
    m.write(tmp_path)
    assert Manifest.read(tmp_path) == m
    assert (tmp_path / "labels.txt").read_text() == "a\nb\n"


def test_input_shape_must_agree_with_preprocessing() -> None:
    with pytest.raises(ValidationError, match="num_seg"):
        _manifest(io=ModelIO(input_shape=(-1, 4, 3, 224, 224)))
    with pytest.raises(ValidationError, match="crop_size"):
        _manifest(io=ModelIO(input_shape=(-1, 8, 3, 112, 112)))


def test_three_crops_take_num_seg_frames_each() -> None:
    three = Preprocessing(num_seg=8, spatial_crops=3)
    assert three.frames_per_clip == 24
    assert _manifest(preprocessing=three, io=ModelIO(input_shape=(-1, 24, 3, 224, 224))).io.input_shape[1] == 24
    with pytest.raises(ValidationError, match="spatial_crops"):
        _manifest(preprocessing=three, io=ModelIO(input_shape=(-1, 8, 3, 224, 224)))
    with pytest.raises(ValidationError):
        Preprocessing(spatial_crops=2)  # only the centre, or start, centre and end


def test_rejects_unsafe_names_and_duplicate_labels() -> None:
    for bad in ["../x", "a/b", "", ".hidden", "a..b"]:
        assert not is_valid_name(bad)
    with pytest.raises(ValidationError):
        _manifest(name="../etc")
    with pytest.raises(ValidationError, match="unique"):
        _manifest(labels=["a", "a"])


def test_kinetics_label_list() -> None:
    labels = read_label_list(LABELS)
    assert len(labels) == 400
    assert labels[0] == "abseiling" and labels[161] == "hurling_(sport)"
    assert labels[196] == "massaging_person's_head"


def test_label_list_wrong_id_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "l.txt"
    path.write_text("0 a\n2 b\n")
    with pytest.raises(ValueError, match=r"l.txt:2: expected id 1"):
        read_label_list(path)


@pytest.mark.parametrize("first", [0, 1])
def test_label_list_ids_may_start_at_0_or_1(tmp_path: Path, first: int) -> None:
    """UCF-101's own classInd.txt counts from 1 (with Windows line ends); the first name is class 0 either way."""
    path = tmp_path / "classInd.txt"
    path.write_text("".join(f"{first + i} {name}\r\n" for i, name in enumerate(["ApplyEyeMakeup", "ApplyLipstick",
                                                                                 "Archery"])))
    assert read_label_list(path) == ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]


@pytest.mark.parametrize(("text", "refusal"), [
    ("1 a\n2 b\n4 c\n", r"classInd.txt:3: expected id 3, got 4"),
    ("1 a\n\n1 b\n", r"classInd.txt:3: expected id 2, got 1"),
    ("0 a\n1 b\n3 c\n", r"classInd.txt:3: expected id 2, got 3"),
    ("2 a\n3 b\n", r"classInd.txt:1: expected id 0 or 1, got 2"),
])
def test_a_gap_or_a_repeat_in_label_ids_names_the_line(tmp_path: Path, text: str, refusal: str) -> None:
    path = tmp_path / "classInd.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=refusal):
        read_label_list(path)


def test_scan_repository_skips_hidden_invalid_and_non_version_folders(tmp_path: Path) -> None:
    from service.contract.manifest import list_versions, scan_repository

    # "²" and "٣" are str.isdigit(), and int("²") raises: such a folder stopped every scan (and the server's start)
    for folder in ["demo/1", "demo/3", "demo/03", "demo/.tmp-x", "demo/0", "demo/latest", ".hidden/1", "bad..name/1",
                   "empty", "demo/²", "demo/٣"]:
        (tmp_path / folder).mkdir(parents=True)
    assert scan_repository(tmp_path) == {"demo": [1, 3]}
    assert list_versions(tmp_path / "demo") == [1, 3]
    assert list_versions(tmp_path / "missing") == []
    assert scan_repository(tmp_path / "missing") == {}


def _write_raw(folder: Path, **changes: object) -> None:
    """A hand-edited manifest.json: a valid one with ``changes`` applied to its JSON."""
    _manifest().write(folder)
    raw = json.loads((folder / "manifest.json").read_text())
    raw.update(changes)
    (folder / "manifest.json").write_text(json.dumps(raw))


def test_a_manifest_from_a_newer_schema_is_refused_in_one_sentence(tmp_path: Path) -> None:
    # A newer exporter may also add fields this code forbids: the version is the reason to give, alone.
    _write_raw(tmp_path, schema_version=SCHEMA_VERSION + 98, calibration={"t": 1.5})
    with pytest.raises(ValueError) as refused:
        Manifest.read(tmp_path)
    assert not isinstance(refused.value, ValidationError)
    assert str(refused.value) == (f"manifest schema_version {SCHEMA_VERSION + 98} is newer than this code reads "
                                  f"({SCHEMA_VERSION}): upgrade the service (or the training code) that reads it")


@pytest.mark.parametrize("bad", [0, -1])
def test_a_schema_version_below_one_is_refused(tmp_path: Path, bad: int) -> None:
    _write_raw(tmp_path, schema_version=bad)
    with pytest.raises(ValueError, match=rf"^manifest schema_version {bad} is not a schema version \(they start "
                                         r"at 1\)$"):
        Manifest.read(tmp_path)
    with pytest.raises(ValidationError, match="they start at 1"):
        _manifest(schema_version=bad)


def test_supported_schema_versions_still_load(tmp_path: Path) -> None:
    for version in range(1, SCHEMA_VERSION + 1):
        _write_raw(tmp_path, schema_version=version)
        assert Manifest.read(tmp_path).schema_version == version
    with pytest.raises(ValidationError, match="newer than this code reads"):
        _manifest(schema_version=SCHEMA_VERSION + 1)


def test_other_errors_stay_pydantic_errors(tmp_path: Path) -> None:
    """Only the version check is lifted out of the ValidationError; a wrong type is pydantic's own message."""
    _write_raw(tmp_path, schema_version="two")
    with pytest.raises(ValidationError, match="schema_version"):
        Manifest.read(tmp_path)
    _write_raw(tmp_path, labels=[])
    with pytest.raises(ValidationError, match="labels"):
        Manifest.read(tmp_path)
