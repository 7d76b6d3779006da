"""Every experiment file composes and resolves to the paper's optimizer settings (tensor2tensor
models/research/adafactor_experiments.py), one row per configuration."""

from __future__ import annotations

import pytest
import yaml
from hydra import compose, initialize_config_dir

ADAM, AFX = "torch.optim.Adam", "adafactor_repro.optim.Adafactor"
# name: (optimizer, lr constant, b1, b2 (None = 1 - t^-c), decay exponent c, clip d, factored, parameter scale,
#        schedule warmup, rsqrt(d_model) factor)
EXPECTED = {
    "afx_adam":          (ADAM, 2.0, 0.9, 0.999, None, None, False, False, 8000, True),
    "vaswani_adam":      (ADAM, 1.0, 0.9, 0.98, None, None, False, False, 4000, True),
    "afx_mimic_adam":    (AFX, 2.0, 0.9, 0.999, None, None, False, False, 8000, True),
    "afx_base":          (AFX, 2.0, 0.0, 0.999, None, None, False, False, 8000, True),
    "afx_factored":      (AFX, 2.0, 0.0, 0.999, None, None, True, False, 8000, True),
    "afx_fast":          (AFX, 2.0, 0.0, 0.9, None, None, False, False, 8000, True),
    "afx_clip":          (AFX, 2.0, 0.0, 0.999, None, 1.0, False, False, 8000, True),
    "afx_clip2":         (AFX, 2.0, 0.0, 0.999, None, 2.0, False, False, 8000, True),
    "afx_clip_factored": (AFX, 2.0, 0.0, 0.999, None, 1.0, True, False, 8000, True),
    "afx_pow05":         (AFX, 2.0, 0.0, None, 0.5, None, False, False, 8000, True),
    "afx_pow08":         (AFX, 2.0, 0.0, None, 0.8, None, False, False, 8000, True),
    "afx_pow10":         (AFX, 2.0, 0.0, None, 1.0, None, False, False, 8000, True),
    "afx_pow08_clip":    (AFX, 2.0, 0.0, None, 0.8, 1.0, False, False, 8000, True),
    "afx_relative":      (AFX, 1.0, 0.0, 0.999, None, None, False, True, 10000, False),
    "afx_adafactor":     (AFX, 1.0, 0.0, None, 0.8, 1.0, True, True, 10000, False),
}


def _compose(repo_root, overrides):
    with initialize_config_dir(str(repo_root / "configs"), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_every_experiment_file_is_pinned(repo_root):
    from adafactor_repro.report.table2 import ROWS

    files = {p.stem for p in (repo_root / "experiments").glob("*.yaml")}
    table2 = {f"table2_{r}" for r in ROWS} | {"table2_base"}  # pinned in test_table2.py
    table3 = {f"table3_{o}_{s}" for o in ("adam", "adafactor") for s in ("scaled", "unit", "small")} | {"table3_base"}
    assert files == set(EXPECTED) | table2 | table3, "add the new experiment to EXPECTED (and to configs/sweep/paper.yaml)"


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("schedule", ["warmup", "no_warmup"])
def test_experiment_resolves_to_paper_settings(repo_root, name, schedule):
    target, lr, b1, b2, c, clip, factored, scale, warmup, rsqrt_d = EXPECTED[name]
    cfg = _compose(repo_root, [f"experiments={name}", f"schedule={schedule}", "scale=gpu"])
    o, s = cfg.optim, cfg.schedule
    assert cfg.name == name
    assert o._target_ == target and o.lr == lr
    if target == ADAM:
        assert list(o.betas) == [b1, b2] and o.eps == 1e-9
        assert "clip_threshold" not in o and "beta1" not in o
    else:
        assert "betas" not in o and "eps" not in o, "Adam-only keys leaked into Adafactor's config"
        assert (o.beta1, o.beta2, o.clip_threshold, o.factored, o.scale_parameter) == (b1, b2, clip, factored, scale)
        if b2 is None:
            assert o.decay_exponent == c
        assert o.eps1 == 1e-30 and o.eps2 == 1e-3
    assert s.warmup_updates == warmup
    assert s.linear_warmup is (schedule == "warmup")
    assert s.d_model == (512 if rsqrt_d else None)  # gpu scale: transformer_base
    assert s.time_scale == 1.0
    assert cfg.scale_name == "gpu" and cfg.data.name == "wmt14" and cfg.model.d_model == 512


def test_cpu_scale_maps_the_schedule_onto_the_paper_run(repo_root):
    from hydra.utils import instantiate

    cfg = _compose(repo_root, ["experiments=table2_O"])
    assert cfg.scale_name == "cpu" and cfg.data.name == "multi30k" and cfg.model.d_model == 128
    # the last update is the paper's update 100k, so the run ends at the paper's final lr
    assert instantiate(cfg.schedule).paper_time(cfg.trainer.max_update) == 100_000


def test_run_dir_names_experiment_and_schedule(repo_root):
    from hydra.core.hydra_config import HydraConfig

    cfg = _compose(repo_root, ["experiments=afx_clip", "schedule=no_warmup"])
    HydraConfig.instance().set_config(cfg)
    assert cfg.run_dir == "runs/cpu/afx_clip-no_warmup-s1"


@pytest.mark.parametrize("sweep", ["paper"])
def test_sweep_files(repo_root, sweep):
    params = yaml.safe_load((repo_root / "configs" / "sweep" / f"{sweep}.yaml").read_text())["hydra"]["sweeper"]["params"]
    exps = params["experiments"].split(",")
    assert set(exps) <= set(EXPECTED) and len(exps) == len(set(exps))
    assert params["schedule"].split(",") == ["warmup", "no_warmup"]
    assert set(exps) == set(EXPECTED), "the paper sweep must list every experiment"
    cfg = _compose(repo_root, [f"+sweep={sweep}"])
    assert cfg.hydra.sweeper.params.experiments == params["experiments"]


TABLE2 = ["table2_" + r for r in [*"ABCDEFGHIJKLMNOP", "Q1", "Q10", "Q100", "Q150", "Q200", "Q300"]]


@pytest.mark.parametrize("name", sorted(EXPECTED) + TABLE2)
def test_experiment_instantiates_its_optimizer_and_schedule(repo_root, name):
    import torch
    from hydra.utils import instantiate

    cfg = _compose(repo_root, [f"experiments={name}"])
    model = torch.nn.Linear(200, 300)
    opt = instantiate(cfg.optim)(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, instantiate(cfg.schedule))
    model(torch.randn(4, 200)).square().mean().backward()
    opt.step()
    sched.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opt.param_groups[0]["lr"] > 0


def test_slurm_launcher_composes(repo_root):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _compose(repo_root, ["hydra/launcher=slurm", "scale=gpu", "+sweep=paper"])
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1


def test_vaswani_scale_accumulates_to_25k_tokens(repo_root):
    cfg = _compose(repo_root, ["scale=vaswani", "experiments=vaswani_adam"])
    # the global batch; the loop splits it over ranks x micro-batches (tests/test_global_batch.py)
    assert cfg.trainer.tokens_per_update == 25_000 and cfg.trainer.update_freq == 1
    assert cfg.model.d_model == 512 and cfg.data.name == "wmt14"
