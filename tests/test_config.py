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


# ---------------------------------------------------------------- config errors: one line, no stub run directory
@pytest.mark.parametrize("overrides, says", [
    (["optim=adafactor", "optim.beta2=1.5"], "optim: Adafactor: beta2 must be"),  # a value the optimizer refuses
    (["optim.beta2=1.5"], "Could not override 'optim.beta2'"),                  # Hydra: no such key in adam
    (["trainer.max_tokens=0"], "trainer.max_tokens=0: must be >= 1"),
    (["scale=nope"], "Could not find 'scale/nope'"),
])
def test_a_config_error_is_one_line_and_leaves_no_run_directory(tmp_path, repo_root, overrides, says):
    import os
    import subprocess
    import sys

    run_dir = tmp_path / "runs" / "x"
    p = subprocess.run([sys.executable, str(repo_root / "scripts" / "train.py"), *overrides, f"run_dir={run_dir}"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, "WANDB_MODE": "disabled"})
    assert p.returncode == 1, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ") and says in lines[0], p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    assert not (tmp_path / "runs").exists(), "a config error left a stub run directory"


def test_validate_config_names_the_group(repo_root):
    from adafactor_repro.config import ConfigError
    from adafactor_repro.train.preflight import compose_train_config, validate_config

    cfg, choices = compose_train_config(["experiments=table2_A"], repo_root / "configs")
    validate_config(cfg, choices)  # the committed experiments pass
    for bad, says in ((["schedule.time_scale=-1"], "schedule: inverse_sqrt: time_scale"),
                      (["model.d_model=33"], "model: TransformerConfig: d_model=33"),
                      (["optim.clip_threshold=0"], "optim: Adafactor: clip_threshold")):
        cfg, choices = compose_train_config(["experiments=table2_A", *bad], repo_root / "configs")
        with pytest.raises(ConfigError, match=says):
            validate_config(cfg, choices)
