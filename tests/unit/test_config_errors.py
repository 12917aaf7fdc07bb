"""Config loading: how a config is found, how override text becomes a value, and the errors for wrong input."""

from pathlib import Path

import pytest

from training.config import CONFIG_DIR, _is_text, load_config


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
