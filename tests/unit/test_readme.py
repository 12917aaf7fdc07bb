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


def _section(title: str) -> str:
    return README.split(f"\n## {title}\n")[1].split("\n## ")[0]


def test_the_section_a_missing_pretrained_file_points_to_is_in_the_training_section() -> None:
    from training.checkpoint import DOWNLOAD_SECTION

    name = DOWNLOAD_SECTION.split(", ", 2)[2].strip("'")
    training = _section("Training")
    assert f"**{name}.**" in training and "ResNet50_pretrain.pdparams" in training


def test_the_training_section_says_where_a_run_writes() -> None:
    """A run writes train.output_dir: its default, and each shipped config's runs/<config file name>."""
    from training.config import CONFIG_DIR, TrainConfig, load_config

    training = " ".join(_section("Training").split())  # as read, whatever the line wrapping
    assert "`runs/<name>/`" not in training
    assert "A run writes into `train.output_dir`" in training
    assert f"leaves it out writes `{TrainConfig().output_dir}/`" in training
    for path in CONFIG_DIR.glob("*.yaml"):
        assert load_config(path).train.output_dir == f"runs/{path.stem}", path.name


def test_the_training_section_says_how_ucf101_models_get_their_class_names() -> None:
    from training.config import CONFIG_DIR, load_config

    assert all(not load_config(path).data.labels for path in CONFIG_DIR.glob("tsm_ucf101_*.yaml"))
    assert "-o data.labels=<path to classInd.txt>" in _section("Training")
