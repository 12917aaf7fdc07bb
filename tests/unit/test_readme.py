"""The README stays true: every setting and metric documented, CI runs the README's test command."""

import re
from pathlib import Path

from service.settings import ServiceSettings

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_settings_table() -> None:
    documented = set(re.findall(r"^\| `TSM_([A-Z0-9_]+)` \|", README, flags=re.M))
    assert documented == {name.upper() for name in ServiceSettings.model_fields}


def test_the_settings_table_shows_each_default() -> None:
    import json

    shown = dict(re.findall(r"^\| `TSM_([A-Z0-9_]+)` \| `([^`]*)` \|", README, flags=re.M))
    for name, field in ServiceSettings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        text = "—" if default is None else json.dumps(default) if isinstance(default, (list, dict)) else str(default)
        assert shown[name.upper()] == text, f"TSM_{name.upper()}: README says {shown[name.upper()]}, code {text}"


def test_every_metric_is_documented() -> None:
    from prometheus_client import CollectorRegistry

    from service.metrics import Metrics

    registry = CollectorRegistry()
    Metrics(registry)
    names = {m.name for m in registry.collect() if m.name.startswith("tsm_")}
    assert names, "no tsm_ metrics registered"
    for name in names:
        assert re.search(rf"`{name}(_total)?`", README), f"{name} is not in the README's metrics table"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    command = re.search(r"^(\S+ test)\s+#", README, flags=re.M)
    assert command is not None
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command.group(1) in ci_lines
