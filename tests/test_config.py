"""The typed views of the trainer, eval and logger groups (adafactor_repro.config) against the YAML."""

from __future__ import annotations

from dataclasses import fields

import pytest
from hydra import compose, initialize_config_dir

from adafactor_repro.config import (
    ConfigError,
    EvalConfig,
    LoggerConfig,
    TrainerConfig,
    check_experiment,
    load_group,
    typed,
)

SCHEMAS = {"trainer": TrainerConfig, "eval": EvalConfig, "logger": LoggerConfig}


@pytest.mark.parametrize("group", sorted(SCHEMAS))
def test_schema_and_yaml_name_the_same_keys(repo_root, group):
    yaml_keys = set(load_group(repo_root / "configs" / group / "default.yaml"))
    assert yaml_keys == {f.name for f in fields(SCHEMAS[group])}


def test_every_scale_and_experiment_composes_to_valid_typed_groups(repo_root):
    """Each scale (with the default experiment) and each experiment (at the cpu scale): the groups they
    override stay within the schema."""
    scales = sorted(p.stem for p in (repo_root / "configs" / "scale").glob("*.yaml"))
    experiments = sorted(p.stem for p in (repo_root / "experiments").glob("*.yaml"))
    assert "cpu" in scales and "afx_adafactor" in experiments
    combos = [[f"scale={s}"] for s in scales] + [["scale=cpu", f"experiments={e}"] for e in experiments]
    with initialize_config_dir(config_dir=str(repo_root / "configs"), version_base="1.3"):
        for overrides in combos:
            cfg = compose("train", overrides=overrides)
            for group, schema in SCHEMAS.items():
                assert isinstance(typed(cfg[group], schema, group), schema), overrides
    for exp in experiments:
        check_experiment(exp)
    with pytest.raises(ConfigError, match="the experiments are: afx_adafactor, afx_adam"):
        check_experiment("afx_adafactr")


def test_a_bad_value_names_the_key_and_the_file():
    good = load_group_default("trainer")
    with pytest.raises(ConfigError, match=r"trainer\.max_update: Value 'ten' .*configs/trainer/default\.yaml"):
        typed({**good, "max_update": "ten"}, TrainerConfig, "trainer")
    with pytest.raises(ConfigError, match=r"trainer\.precision='fp8': use auto, bf16 or fp32"):
        typed({**good, "precision": "fp8"}, TrainerConfig, "trainer")
    with pytest.raises(ConfigError, match=r"trainer\.max_updat: Key 'max_updat' not in 'TrainerConfig'"):
        typed({**good, "max_updat": 3}, TrainerConfig, "trainer")
    with pytest.raises(ConfigError, match=r"logger\.mode='on': use offline, online or disabled"):
        typed({**load_group_default("logger"), "mode": "on"}, LoggerConfig, "logger")


def load_group_default(group: str) -> dict:
    from adafactor_repro.config import config_root

    return load_group(config_root() / group / "default.yaml")
