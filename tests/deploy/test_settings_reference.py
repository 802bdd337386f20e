"""The settings reference: generated from `deploy/settings.py`, fresh, and complete both ways (every
variable `Settings.load` reads is documented, every documented one is read)."""

from collections.abc import Iterator
from pathlib import Path

from deploy.settings import FIELD_DEFAULTS, SECRETS, VARIABLES, Settings, settings_env
from deploy.settings_reference import DOC, render

TEXT = DOC.read_text()


class Recording(dict):
    """An environment that records every key looked up in it."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key, default=None):  # noqa: ANN001, ANN201
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):  # noqa: ANN001, ANN204
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:  # noqa: ANN001
        self.read.add(key)
        return super().__contains__(key)

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("Settings.load must look variables up by name, not scan the environment")


def test_the_reference_is_generated_and_a_stale_copy_fails():
    assert render(TEXT) == TEXT, "the table of docs/settings.md is stale: make generate"
    stale = TEXT.replace("| `HAP_JOIN_WINDOW_S` | 30 |", "| `HAP_JOIN_WINDOW_S` | 45 |")
    assert stale != TEXT and render(stale) != stale
    dropped = "\n".join(line for line in TEXT.splitlines() if "`HAP_LOG_LEVEL`" not in line) + "\n"
    assert render(dropped) != dropped


def test_every_variable_read_is_documented_and_every_documented_one_is_read(tmp_path):
    env = Recording({"HAP_DATA_DIR": str(tmp_path)})
    Settings.load(env)
    documented = [var.name for var in VARIABLES]
    assert len(documented) == len(set(documented))
    assert env.read == set(documented)
    for name in documented:
        assert f"`{name}`" in TEXT


def test_the_secrets_are_the_variables_marked_secret():
    assert {var.name for var in VARIABLES if var.secret} == set(SECRETS)
    rows = {line.split("`")[1]: line for line in TEXT.splitlines() if line.startswith("| `HAP_")}
    assert {name for name, row in rows.items() if "**secret**" in row} == set(SECRETS)


def test_a_plain_variable_sets_its_field_and_unset_gives_the_documented_default(tmp_path):
    base = {"HAP_DATA_DIR": str(tmp_path)}
    unset = Settings.load(base)
    plain = [var for var in VARIABLES if var.plain]
    assert {"join_window_s", "router_policy", "learner_method", "log_level", "damr_budget"} <= {v.field for v in plain}
    for var in plain:
        default = FIELD_DEFAULTS[var.field]
        assert getattr(unset, var.field) == default, var.name
        value = other(default)
        raw = str(value).lower() if isinstance(value, bool) else str(value)
        assert getattr(Settings.load({**base, var.name: raw}), var.field) == value, var.name


def other(default: object) -> object:
    """A value of ``default``'s type that is not ``default``."""
    if isinstance(default, bool):
        return not default
    if isinstance(default, (int, float)):
        return default + 7
    return f"{default}x"


def test_settings_env_names_the_variables_of_fields_for_a_child(tmp_path):
    env = settings_env(topic_prefix="run7.", data_dir=tmp_path, damr_budget=0.3)
    loaded = Settings.load(env)
    assert (loaded.topic_prefix, loaded.data_dir, loaded.damr_budget) == ("run7.", Path(tmp_path), 0.3)


def test_no_variable_name_or_key_prefix_is_spelled_outside_the_settings():
    """Every ``HAP_*`` name and the ``hap:`` key prefix live in ``deploy/settings.py`` (messages and
    help texts ask :func:`deploy.settings.env_name`); a copy elsewhere in the code goes stale."""
    root = Path(__file__).resolve().parents[2]
    allowed = {root / "deploy" / "settings.py", root / "deploy" / "settings_reference.py"}
    found = [f"{path.relative_to(root)}:{n}" for package in ("streams", "learner", "router", "feature_store", "deploy")
             for path in sorted((root / package).rglob("*.py")) if path not in allowed
             for n, line in enumerate(path.read_text().splitlines(), 1) if "HAP_" in line or '"hap:"' in line]
    assert found == []
