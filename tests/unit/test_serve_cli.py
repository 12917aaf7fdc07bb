"""``tsm-serve``'s settings from the command line and the environment: empty variables, refusals, ``--help``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import ServiceSettings

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("name", ["TSM_UPLOAD_DIR", "TSM_TRT_CACHE_DIR", "TSM_API_KEY", "TSM_DEFAULT_MODEL",
                                  "TSM_PORT", "TSM_MODEL_VERSIONS"])
def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """``TSM_UPLOAD_DIR=`` was Path('.'): uploads landed in the current folder; ``TSM_API_KEY=`` was refused."""
    monkeypatch.setenv(name, "")
    field = name.removeprefix("TSM_").lower()
    default = ServiceSettings.model_fields[field].get_default(call_default_factory=True)
    assert getattr(ServiceSettings(), field) == default


@pytest.mark.parametrize(("argv", "env", "line"), [
    (["--port", "-1"], {}, "--port (TSM_PORT): Input should be greater than or equal to 0"),
    (["--model-repo", "m"], {"TSM_PRECISION": "int8"},
     "TSM_PRECISION, TSM_TENSORRT: Value error, precision=int8 needs tensorrt=true"),
    ([], {"TSM_REQUEST_DEADLINE_MS": "2000"},
     "TSM_DECODE_TIMEOUT_S, TSM_REQUEST_DEADLINE_MS: Value error, decode_timeout_s (10 s) must be below"),
    ([], {"TSM_API_KEY": "sekret"}, "TSM_API_KEY: Value error, api_key must be at least 8 characters"),
    ([], {"TSM_MODEL_VERSIONS": '{"tiny": "three"}'}, "TSM_MODEL_VERSIONS[tiny]: Input should be a valid integer"),
])
def test_a_refusal_names_the_flag_or_the_variables_involved(monkeypatch: pytest.MonkeyPatch, argv: list[str],
                                                           env: dict[str, str], line: str) -> None:
    """A check across settings named no variable (``TSM_SETTINGS``); a refused flag was named as its variable."""
    import service.cli
    from service.cli import serve

    def accepted(*_: object) -> None:  # else a missing check would start a server here, never to return
        raise AssertionError("the settings were accepted")

    monkeypatch.setattr(service.cli, "create_app", accepted)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        serve(argv)
    first, second, *rest = str(exit_info.value.code).splitlines()
    assert first == "tsm-serve: refused settings:" and second.startswith(f"  {line}"), second
    assert not rest and "sekret" not in second


def test_help_describes_each_flag_from_its_setting_and_points_to_the_variables() -> None:
    done = subprocess.run([sys.executable, "-m", "service.cli", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    text = " ".join(done.stdout.split())  # argparse wraps to the terminal's width
    for name, flag in {"host": "--host", "port": "--port", "model_repo": "--model-repo"}.items():
        field = ServiceSettings.model_fields[name]
        assert f"{flag} {name.upper()} {field.description} Default: {field.default}; environment variable " \
               f"TSM_{name.upper()}." in text, text
    assert "README's Settings table" in text and all(f"TSM_{n.upper()}" in text for n in ServiceSettings.model_fields)


def test_unknown_tsm_variables_are_named_but_not_the_other_tools() -> None:
    from service.settings import unknown_variables

    warnings = unknown_variables({"TSM_MAX_BATCHSIZE": "8", "TSM_HTTP_PORT": "8080", "TSM_BENCH_CACHE": "/tmp/b",
                                  "TSM_PORT": "1", "PATH": "/bin", "TSM_ZZZ": "1"})
    assert warnings == ["TSM_MAX_BATCHSIZE is not a setting (did you mean TSM_MAX_BATCH_SIZE?); it is ignored",
                        "TSM_ZZZ is not a setting; it is ignored"]
