"""NodeConfig: defaults, checks, and the file < env < overrides order."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvactors import ConfigError, NodeConfig
from kvactors.core import ring


def test_defaults_match_the_design() -> None:
    config = NodeConfig()
    assert config.partitions == ring.DEFAULT_PARTITIONS  # chosen for the ring targets
    assert config.max_key_bytes == 64 * 1024
    assert config.max_value_bytes == 1024 * 1024
    assert config.storage == "memory"
    assert config.name.startswith("node-")
    assert NodeConfig().name != config.name  # each default name is unique


@pytest.mark.parametrize(
    "changes",
    [
        {"partitions": 48},
        {"partitions": 0},
        {"storage": "tape"},
        {"name": ""},
        {"max_value_bytes": 0},
        {"request_timeout": -1},
        {"max_seconds": 0},
    ],
)
def test_bad_values_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        NodeConfig(**changes)  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    config = NodeConfig()
    with pytest.raises(AttributeError):
        config.partitions = 8  # type: ignore[misc]
    assert config.replace(partitions=8).partitions == 8


def test_load_layers_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[node]\nname = "from-file"\npartitions = 16\nrequest-timeout = 2.5\n')
    env = {"KVACTORS_PARTITIONS": "32", "KVACTORS_MAX_RESTARTS": "7", "OTHER": "x"}
    config = NodeConfig.load(path, env=env, name=None, max_restarts=9)
    assert config.name == "from-file"  # a None override does not mask the file
    assert config.partitions == 32  # env beats the file
    assert config.max_restarts == 9  # an explicit override beats env
    assert config.request_timeout == 2.5


def test_load_reports_unknown_fields_and_bad_numbers(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("partitons = 16\n")
    with pytest.raises(ConfigError, match="partitons"):
        NodeConfig.load(path, env={})
    with pytest.raises(ConfigError, match="KVACTORS_PARTITIONS"):
        NodeConfig.load(env={"KVACTORS_PARTITIONS": "many"})
    with pytest.raises(ConfigError, match="cannot read"):
        NodeConfig.load(tmp_path / "absent.toml", env={})
