"""The paper's Table 2 as experiments and as a results table.

- every row's experiment file resolves to the settings of the paper's table (the transcription in
  report/paper_table2.csv, itself checked against the paper's numbers here);
- the cell table aggregates seeds, applies the one collapse rule, marks split cells, counts agreement;
- Figure 1 is drawn from the per-matrix RMS(U) the loop logs.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from adafactor_repro.report import find_runs
from adafactor_repro.report import table2 as T

AFX, SGD = "adafactor_repro.optim.Adafactor", "torch.optim.SGD"


def _compose(repo_root, overrides):
    with initialize_config_dir(str(repo_root / "configs"), version_base="1.3"):
        return compose("train", overrides=overrides)


def test_paper_numbers_are_the_papers():
    p = T.paper_table()
    assert len(p) == 44 and {r for r, _ in p} == set(T.ROWS)
    # spot checks against arXiv:1804.04235v1 Table 2 (and the paper's text, Section 4.1)
    assert (p[("A", "warmup")]["bleu"], p[("A", "no_warmup")]["bleu"]) == ("25.6", "0.1")
    assert (p[("B", "no_warmup")]["bleu"], p[("E", "warmup")]["bleu"]) == ("23.1", "0.3")
    assert (p[("L", "no_warmup")]["bleu"], p[("O", "no_warmup")]["bleu"]) == ("0.1", "25.5")
    assert (p[("Q100", "no_warmup")]["bleu"], p[("Q300", "warmup")]["bleu"]) == ("diverged", "diverged")
    # the collapse rule on the paper's own table: 0.2 x 25.9 (row N with warmup)
    assert T.paper_threshold(p) == pytest.approx(0.2 * 25.9)


def _paper_b2(s: str):
    return (None, float(s.split("^-")[1])) if s.startswith("1-t") else (float(s), None)


@pytest.mark.parametrize("row", T.ROWS)
@pytest.mark.parametrize("schedule", T.SCHEDULES)
def test_every_row_resolves_to_the_papers_settings(repo_root, row, schedule):
    paper = T.paper_table()[(row, schedule)]
    cfg = _compose(repo_root, [f"experiments=table2_{row}", f"schedule={schedule}", "scale=gpu"])
    o, s = cfg.optim, cfg.schedule
    assert cfg.paper_row == row and cfg.name == f"table2_{row}"
    # s_t = min(1e-6 t, 1/sqrt t) with warmup, min(1e-2, 1/sqrt t) without: rsqrt(max(t, 1e4)) * min(1, t/1e4)
    assert s.warmup_updates == 10000 and s.linear_warmup is (schedule == "warmup")
    assert s.time_scale == 1.0 and s.warmup_time_scale is None
    sched = T_schedule(cfg)
    for t in (1, 500, 9999, 10000, 40000, 100000):
        want = min(1e-6 * t, t**-0.5) if schedule == "warmup" else min(1e-2, t**-0.5)
        got = sched(t - 1) * o.lr
        if row.startswith("Q"):
            assert o._target_ == SGD and o.momentum == 0.0
            assert got == pytest.approx(int(row[1:]) * want, rel=1e-9)  # lr = k s_t (d_model 512)
            continue
        assert o._target_ == AFX and o.eps1 == 1e-30 and o.eps2 == 1e-3 and o.min_dim_size_to_factor == 128
        if paper["step"] == "rho_t = s_t":
            assert o.scale_parameter is True and got == pytest.approx(want, rel=1e-9)
        else:
            assert o.scale_parameter is False and got == pytest.approx(0.1 * want, rel=1e-9)  # 0.1 s_t at d 512
    if row.startswith("Q"):
        return
    assert o.beta1 == float(paper["beta1"])
    b2, c = _paper_b2(paper["beta2"])
    assert o.beta2 == b2 and (c is None or o.decay_exponent == c)
    assert o.clip_threshold == (float(paper["clip_d"]) if paper["clip_d"] else None)
    factored = {"no": False, "yes": True, "row-mean only": "row", "col-mean only": "col"}[paper["factored"]]
    assert o.factored == factored


def T_schedule(cfg):
    from hydra.utils import instantiate

    return instantiate(cfg.schedule)


def test_absolute_steps_carry_rsqrt_d_model_to_narrower_models(repo_root):
    """At the cpu scale (d 128) rows A-N step 0.1 s_t * sqrt(512/128), as tensor2tensor's rsqrt_hidden_size
    would; the relative step of O and P has no width factor."""
    a = _compose(repo_root, ["experiments=table2_A", "schedule=no_warmup"])
    o_ = _compose(repo_root, ["experiments=table2_O", "schedule=no_warmup"])
    assert a.model.d_model == 128
    assert T_schedule(a)(0) * a.optim.lr == pytest.approx(0.1 * 1e-2 * 2.0)
    assert T_schedule(o_)(0) * o_.optim.lr == pytest.approx(1e-2)


def test_cpu_scale_keeps_the_optimizer_clocks_raw(repo_root):
    cfg = _compose(repo_root, ["experiments=table2_O", "schedule=warmup"])
    s = T_schedule(cfg)
    n = cfg.trainer.max_update
    # the first phase (the paper's 10k-update warmup) ends at 500 raw updates; the run ends at the paper's 100k
    knee = cfg.schedule.warmup_updates / cfg.schedule.warmup_time_scale
    assert knee == 500 and s.paper_time(n) == pytest.approx(100_000)
    assert s(int(knee) - 1) == pytest.approx(1e-2) and s(n - 1) == pytest.approx(100_000**-0.5)
    # nothing in the optimizer is rescaled: beta2 / 1 - t^-c count raw updates, as in the paper
    assert cfg.optim.beta2 is None and cfg.optim.decay_exponent == 0.8 and "time_scale" not in cfg.optim
    assert cfg.model.pre_norm is False  # the declared sensitiser; scale=cpu_prenorm is the faithful twin
    assert _compose(repo_root, ["scale=cpu_prenorm"]).model.pre_norm is True


def test_sweeps_cover_the_table(repo_root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce", repo_root / "scripts" / "reproduce.py")
    rep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rep)
    exps, scheds, seeds = rep.sweep_cells("table2")
    assert exps == [f"table2_{r}" for r in T.ROWS] and set(scheds) == set(T.SCHEDULES) and seeds == [1, 2, 3]
    core, _, core_seeds = rep.sweep_cells("table2_core")
    assert set(core) < set(exps) and core_seeds == [1]


# ---------------------------------------------------------------------------------------------------------
def _run(root, repo_root, row, sched, seed, *, bleu=None, status="completed", rms=None):
    d = root / f"table2_{row}-{sched}-s{seed}"
    d.mkdir(parents=True)
    cfg = OmegaConf.to_container(_compose(repo_root, [f"experiments=table2_{row}", f"schedule={sched}",
                                                      f"trainer.seed={seed}"]), resolve=False)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "summary.json").write_text(json.dumps({
        "status": status, "name": f"table2_{row}", "schedule": sched, "updates": 100, "valid_ppl": 10.0,
        "optimizer_state_bytes": 800, "num_parameters": 100, "wall_time_s": 60.0}))
    if bleu is not None:
        (d / "bleu.json").write_text(json.dumps({"test": {"bleu": bleu, "signature": "nrefs:1"}}))
    lines = [{"split": "train", "update": u, **({"optim_rms_u/encoder.0.ffn.fc1.weight": rms * u} if rms else {})}
             for u in (10, 20, 30)]
    lines += [{"split": "valid", "update": u, "loss": 5.0 - u / 100} for u in (50, 100)]
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in lines) + "\n")
    return d


def test_cells_seeds_collapse_split_and_agreement(tmp_path, repo_root):
    root = tmp_path / "runs"
    _run(root, repo_root, "A", "warmup", 1, bleu=20.0)
    _run(root, repo_root, "A", "warmup", 2, bleu=22.0)       # best warmup mean 21 -> threshold 4.2
    _run(root, repo_root, "A", "no_warmup", 1, bleu=1.0)
    _run(root, repo_root, "A", "no_warmup", 2, bleu=0.5)
    _run(root, repo_root, "A", "no_warmup", 3, status="diverged")   # counts as 0
    _run(root, repo_root, "B", "no_warmup", 1, bleu=18.0)
    _run(root, repo_root, "B", "no_warmup", 2, bleu=2.0)      # split: 1/2 collapsed, mean 10 trains
    _run(root, repo_root, "Q300", "warmup", 1, status="diverged")
    _run(root, repo_root, "C", "no_warmup", 1)                # not scored yet: no cell
    s = T.summarize(find_runs(root))
    assert s["split"] == "test"
    rows = {(r["row"], r["schedule"]): r for r in s["rows"]}
    assert list(rows) == [("A", "warmup"), ("A", "no_warmup"), ("B", "no_warmup"), ("Q300", "warmup")]
    a_w, a_nw, b_nw, q = rows.values()
    assert (a_w["bleu_mean"], a_w["bleu_sd"], a_w["n_seeds"]) == ("21.00", f"{math.sqrt(2):.2f}", "2")
    assert (a_nw["bleu_mean"], a_nw["n_seeds"], a_nw["n_collapsed"], a_nw["n_diverged"]) == ("0.50", "3", "3", "1")
    assert a_nw["verdict"] == "collapsed" and a_nw["paper_bleu"] == "0.1" and a_nw["agrees"] == "yes"
    assert a_w["verdict"] == "trains" and a_w["agrees"] == "yes"
    assert b_nw["verdict"] == "trains (split: 1/2 seeds collapsed)" and b_nw["agrees"] == "yes"  # the mean decides
    assert q["verdict"] == "collapsed" and q["paper_bleu"] == "diverged" and q["agrees"] == "yes"
    assert a_nw["seeds_bleu"] == "s1:1.00 s2:0.50 s3:0.00"
    assert s["agreement"] == {"no_warmup": (2, 2), "all": (4, 4)}

    md = T.to_markdown(s["rows"], s["cells"])
    assert "no-warmup cells 2/2; all cells 4/4" in md and "threshold" not in md.split("\n")[0]
    # moving the line: at 0.5 x 21 = 10.5, B without warmup (mean 10) collapses where the paper's 23.1 trains
    sens = T.sensitivity(s["cells"], s["split"])
    assert sens[0.2] == s["agreement"] and sens[0.5] == {"no_warmup": (1, 2), "all": (3, 4)}
    assert "0.5 x best warmup: no-warmup 1/2, all 3/4." in md
    rows_csv = list(csv.DictReader(T.to_csv(s["rows"]).splitlines()))
    assert {"row", "schedule", "paper_bleu", "bleu_mean", "bleu_sd", "n_seeds", "n_collapsed", "agrees"} <= set(rows_csv[0])


def test_a_disagreement_is_reported_as_one(tmp_path, repo_root):
    root = tmp_path / "runs"
    _run(root, repo_root, "H", "warmup", 1, bleu=20.0)
    _run(root, repo_root, "H", "no_warmup", 1, bleu=0.3)  # the paper: 21.5 (trains)
    rows = T.summarize(find_runs(root))["rows"]
    assert [r["agrees"] for r in rows] == ["yes", "no"]
    # the side-by-side layout: one line per row, the paper's number beside ours, the disagreement marked
    (line,) = [ln for ln in T.to_wide_markdown(rows).splitlines() if ln.startswith("| H ")]
    assert "| 25.4 | 20.00 (n=1) trains | 21.5 | 0.30 (n=1) collapsed **≠** |" in line


def test_figure1_from_logged_rms_u(tmp_path, repo_root):
    from adafactor_repro.report.plots import plot_figure1

    root = tmp_path / "runs"
    for row in ("A", "G"):
        for sched in T.SCHEDULES:
            _run(root, repo_root, row, sched, 1, bleu=10.0, rms=0.01)
    p = plot_figure1(find_runs(root), tmp_path / "fig1.png")
    assert p is not None and p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 10000
    # runs that logged no per-matrix RMS(U) give no figure rather than an empty one
    assert plot_figure1(find_runs(root), tmp_path / "none.png", matrix="no.such.weight") is None


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("factored", [True, False, "row"])
def test_rms_u_of_one_matrix_is_the_references(fused, factored):
    """Adafactor.rms_u(p), the quantity of Figure 1, equals the float64 reference's RMS(U) before clipping,
    on the C kernel (fused=None on fp32 CPU) and the eager path, for every parameter, after several steps."""
    import torch
    from optim_reference import ReferenceAdafactor

    from adafactor_repro.optim import Adafactor

    torch.manual_seed(0)
    params = [torch.randn(160, 130), torch.randn(7), torch.randn(3, 140, 128)]
    params = [torch.nn.Parameter(p) for p in params]
    kw = dict(lr=0.01, beta2=0.999, clip_threshold=1.0, factored=factored, scale_parameter=False)
    opt, ref = Adafactor(params, fused=fused, **kw), ReferenceAdafactor(params, **kw)
    for _ in range(3):
        grads = [torch.randn_like(p) * 10 ** torch.randint(-2, 2, ()) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        ref.step(grads)
        for p, want in zip(params, ref.rms_u):
            assert opt.rms_u(p).item() == pytest.approx(want, rel=1e-5)
    assert opt.rms_u(torch.nn.Parameter(torch.zeros(2))) is None  # not one of its parameters


def test_the_loop_logs_rms_u_of_the_tracked_matrices(tmp_path, make_cfg):
    from test_train_e2e import records

    from adafactor_repro.train import train

    cfg = make_cfg("experiments=table2_A", "trainer.max_update=10", "trainer.bleu_at_end=false",
                   "logger.track_rms_u=[encoder.0.ffn.fc1.weight,embed_tokens.weight]")
    train(cfg)
    recs = records(tmp_path / "run")
    assert [r["update"] for r in recs] == [5, 10]
    for r in recs:
        for name in ("encoder.0.ffn.fc1.weight", "embed_tokens.weight"):
            assert 0 < r[f"optim_rms_u/{name}"] < 100
    with pytest.raises(ValueError, match="logger.track_rms_u: no parameter named"):
        train(make_cfg("experiments=table2_A", "logger.track_rms_u=[no.such.weight]", run="bad"))


@pytest.mark.slow
def test_verify_run_retrains_a_committed_run_bit_for_bit(tmp_path, make_cfg, toy_corpus, toy_data_root, repo_root):
    """scripts/verify_run.py: a run retrained from its config logs the same losses; a tampered log fails."""
    import importlib.util

    from conftest import TINY

    from adafactor_repro.train import train

    same = [f"data.local_dir={toy_corpus}", f"data.root={toy_data_root}", *TINY, "schedule.time_scale=1.0",
            "schedule.warmup_time_scale=null", "schedule.warmup_updates=10", "trainer.log_interval=5"]
    train(make_cfg("experiments=table2_O", "trainer.max_update=10", "trainer.bleu_at_end=false", *same[2:]))
    spec = importlib.util.spec_from_file_location("verify_run", repo_root / "scripts" / "verify_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run = tmp_path / "run"
    assert mod.main([str(run), "--updates", "10", "--", *same]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec["loss"] += 1e-6
    (run / "metrics.jsonl").write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")
    assert mod.main([str(run), "--updates", "10", "--", *same]) == 1
    assert mod.main([str(run), "--updates", "10", "--rtol", "1e-6", "--", *same]) == 0  # 1e-6 in ~8: 1.3e-7
    assert json.loads((run / "summary.json").read_text())["cpu"]  # the machine that trained it, for the message
    # the same losses on other data are not a verification: the tokenizer's content is compared too
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data_artifact"]["spm_sha256"] = "0" * 64
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert mod.main([str(run), "--updates", "10", "--rtol", "1e-6", "--", *same]) == 1
    # --sample draws from a folder of runs with a printed seed
    assert mod.main([str(tmp_path), "--sample", "1", "--updates", "10", "--rtol", "1e-6", "--", *same]) == 1


def test_the_step_column_shows_the_step_each_scale_ran(tmp_path, repo_root):
    root = tmp_path / "runs"
    for row in ("A", "O", "Q10"):
        _run(root, repo_root, row, "warmup", 1, bleu=10.0)
    runs = {r.config["paper_row"]: r for r in find_runs(root)}
    assert runs["A"].config["model"]["d_model"] == 128  # the cpu scale: 0.1 sqrt(512) rsqrt(128) = 0.2
    assert [T.step_run(runs[r].config) for r in ("A", "O", "Q10")] == ["0.2 s_t", "rho_t = s_t", "20 s_t"]
    gpu = {"optim": {"_target_": "adafactor_repro.optim.Adafactor", "lr": 0.1 * math.sqrt(512),
                     "scale_parameter": False}, "schedule": {"d_model": 512}}
    assert T.step_run(gpu) == "0.1 s_t"  # the paper's width: the paper's step
    rows = T.summarize(list(runs.values()))["rows"]
    (a,) = [ln for ln in T.to_wide_markdown(rows).splitlines() if ln.startswith("| A ")]
    assert "| 0.1 s_t | 0.2 s_t |" in a
    assert [r["step_run"] for r in rows] == ["0.2 s_t", "rho_t = s_t", "20 s_t"]


def test_valid_loss_axis_is_not_scaled_by_a_diverged_run(tmp_path, repo_root, monkeypatch):
    from adafactor_repro.report import plots

    root = tmp_path / "runs"
    _run(root, repo_root, "A", "warmup", 1, bleu=10.0)         # losses 4.5 and 4.0
    _run(root, repo_root, "B", "no_warmup", 1, bleu=10.0)
    bad = _run(root, repo_root, "Q300", "warmup", 1, status="diverged")
    (bad / "metrics.jsonl").write_text(json.dumps({"split": "valid", "update": 50, "loss": 1.2e15}) + "\n")
    s = json.loads((bad / "summary.json").read_text())
    (bad / "summary.json").write_text(json.dumps({**s, "diverged_at": 51}))
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path)
    assert plots.plot_valid_loss(find_runs(root), tmp_path / "v.png") is not None
    (fig,) = figs
    lo, hi = fig.axes[0].get_ylim()
    assert 3.9 < lo < 4.0 and 4.5 < hi < 4.6, (lo, hi)  # the span of the runs that did not diverge
    labels = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert "Q300 (s1) diverged at update 51 (last loss 1.2e+15, off scale)" in labels
    marker = next(ln for ax in fig.axes for ln in ax.lines if ln.get_label().startswith("Q300"))
    assert marker.get_marker() == "x" and marker.get_ydata()[-1] <= hi
    # distinct colours within every panel
    for ax in fig.axes:
        colors = [ln.get_color() for ln in ax.lines if not ln.get_label().startswith("_")]
        assert len(colors) == len(set(colors))


def test_figure1_uses_the_papers_colours_and_labels_its_log_axis(tmp_path, repo_root, monkeypatch):
    from adafactor_repro.report import plots

    root = tmp_path / "runs"
    for row in ("A", "G"):
        _run(root, repo_root, row, "warmup", 2, bleu=10.0, rms=0.06)  # RMS 0.6 .. 1.8
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path)
    plots.plot_figure1(find_runs(root), tmp_path / "f.png")
    (fig,) = figs
    ax = fig.axes[0]
    color = {ln.get_label().split(":")[0]: ln.get_color() for ln in ax.lines if ln.get_label().startswith("row")}
    assert color == {"row A": "tab:blue", "row G": "tab:red"}  # the paper: slow decay blue, fast decay red
    ticks = [float(t.get_text()) for t in ax.get_yticklabels() if t.get_text()]
    assert min(ticks) <= 0.7 and max(ticks) >= 1.5  # labels across 0.6 .. 1.8, not only around 1
    assert "seed 2" in fig._suptitle.get_text()
    assert plots.log_ticks(0.35, 1.9) == [0.4, 0.5, 0.7, 1, 1.5]
