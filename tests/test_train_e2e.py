"""End-to-end runs of train(cfg) on a tiny synthetic corpus: smoke, resume bit-identity, corrupt
checkpoints, non-finite steps. Tiny model (d_model 32), a few dozen updates each, wandb disabled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def train(cfg):
    from adafactor_repro.train import train as _train

    return _train(cfg)


def records(run_dir: Path, split: str = "train") -> list[dict]:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r.get("split") == split]


def model_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint_last.pt", weights_only=True)["model"]


@pytest.mark.slow
def test_smoke_run_learns_and_writes_the_run_directory(tmp_path, make_cfg, capsys):
    torch.manual_seed(0)
    # a peak FLOP/s given explicitly gives an MFU on CPU too (on a GPU it is looked up from the card name)
    cfg = make_cfg("trainer.max_update=40", "trainer.peak_flops=1e12", "trainer.bleu_interval=20",
                   "eval.max_sentences=4")
    s = train(cfg)
    out = capsys.readouterr().out.splitlines()  # off a terminal: one line per record, update of total, ETA
    assert any(ln.startswith("[train]") and "update=40/40" in ln and "eta=0s" in ln for ln in out), out
    assert any(ln.startswith("[decode] test: ") and "sacreBLEU" in ln for ln in out), out
    assert out[-1].startswith(f"{tmp_path / 'run'}: run completed; 40 updates; wall "), out[-1]
    run = tmp_path / "run"
    assert s["status"] == "completed" and s["updates"] == 40 and s["schedule"] == "warmup"
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "bleu.json", "checkpoint_last.pt",
              "checkpoint_best.pt", "checkpoint_40.pt", "hyp.valid.txt", "hyp.test.txt"):
        assert (run / f).is_file(), f
    assert sorted(p.name for p in run.glob("checkpoint_[0-9]*.pt")) == ["checkpoint_20.pt", "checkpoint_30.pt",
                                                                        "checkpoint_40.pt"]  # keep_last 3
    train_recs = records(run)
    assert [r["update"] for r in train_recs] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert train_recs[-1]["loss"] < 0.8 * train_recs[0]["loss"]  # it learns
    for key in ("nll", "ppl", "lr", "gnorm", "tokens_per_s", "peak_memory_bytes", "optimizer_state_bytes"):
        assert train_recs[-1][key] is not None and train_recs[-1][key] > 0, key
    assert 0 < train_recs[-1]["mfu"] < 1
    valid = [r for r in records(run, "valid") if "loss" in r]
    assert [r["update"] for r in valid] == [10, 20, 30, 40]
    periodic_bleu = [r for r in records(run, "valid") if "bleu" in r]  # on eval.max_sentences sentences
    assert [(r["update"], r["bleu_sentences"]) for r in periodic_bleu] == [(20, 4), (40, 4)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["valid_loss"] == pytest.approx(valid[-1]["loss"])
    assert summary["optimizer_state_bytes"] > 0 and summary["num_parameters"] > 0
    bleu = json.loads((run / "bleu.json").read_text())
    assert set(bleu) == {"valid", "test"} and "bleu_signature" in bleu["test"]
    # the run records which data build and which sentencepiece model it saw
    import yaml

    from adafactor_repro.data import load_meta
    art = yaml.safe_load((run / "config.yaml").read_text())["data_artifact"]
    meta = load_meta(art["dir"])
    assert art["spm_sha256"] == meta["spm"]["sha256"] and len(art["spm_sha256"]) == 64
    assert art["key"] == meta["key"]
    assert len((run / "hyp.test.txt").read_text().splitlines()) == 16
    ckpt = torch.load(run / "checkpoint_last.pt", weights_only=True)
    for k in ("model", "optimizer", "scheduler", "sampler", "rng", "update", "epoch", "config", "model_args",
              "data_dir", "git_commit"):
        assert k in ckpt, k
    # a completed run is not retrained by the same command
    mtime = (run / "checkpoint_last.pt").stat().st_mtime_ns
    assert train(make_cfg("trainer.max_update=40"))["status"] == "completed"
    assert (run / "checkpoint_last.pt").stat().st_mtime_ns == mtime


def _interrupt_at(monkeypatch, update: int):
    """Make the loop die (like a kill) right after `update` is logged; nothing is saved at that point."""
    from adafactor_repro.train import loop

    real = loop._log_train

    def boom(logger, optimizer, scheduler, win, num_updates, *a, **k):
        rec = real(logger, optimizer, scheduler, win, num_updates, *a, **k)
        if num_updates == update:
            raise RuntimeError("simulated crash")
        return rec

    monkeypatch.setattr(loop, "_log_train", boom)


@pytest.mark.slow
def test_resume_after_interruption_is_bit_identical(tmp_path, make_cfg, monkeypatch):
    torch.manual_seed(0)
    ref = train(make_cfg("trainer.bleu_at_end=false", run="ref"))
    assert ref["status"] == "completed"

    # crash at update 25: the last checkpoint is from update 20; metrics 21-25 are past it
    _interrupt_at(monkeypatch, 25)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(make_cfg("trainer.bleu_at_end=false", run="resumed"))
    crashed = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    # the summary says that an error stopped the run, which one, and the update it reached
    assert crashed["status"] == "failed" and "simulated crash" in crashed["error"], crashed
    assert crashed["failed_at"] == crashed["updates"] == 25, crashed
    monkeypatch.undo()
    torch.manual_seed(123)  # the global RNG state of the new process must not matter: it is restored
    s = train(make_cfg("trainer.bleu_at_end=false", run="resumed"))
    assert s["status"] == "completed" and s["updates"] == 30

    a, b = model_state(tmp_path / "ref"), model_state(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed parameters differ from the uninterrupted run"
    oa = torch.load(tmp_path / "ref" / "checkpoint_last.pt", weights_only=True)["optimizer"]["state"]
    ob = torch.load(tmp_path / "resumed" / "checkpoint_last.pt", weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])
    strip = lambda recs: [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s", "peak_memory_bytes")}
                          for r in recs]
    assert strip(records(tmp_path / "ref")) == strip(records(tmp_path / "resumed"))
    assert strip(records(tmp_path / "ref", "valid")) == strip(records(tmp_path / "resumed", "valid"))


@pytest.mark.slow
def test_truncated_last_checkpoint_resumes_from_the_previous_one(tmp_path, make_cfg):
    torch.manual_seed(0)
    cfg = make_cfg("trainer.bleu_at_end=false", "trainer.max_update=20")
    train(cfg)
    run = tmp_path / "run"
    last = run / "checkpoint_last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])
    (run / "checkpoint_20.pt").unlink()  # so the fallback has to go back to update 10
    with pytest.warns(UserWarning, match=r"checkpoint_last\.pt: corrupt or truncated"):
        s = train(make_cfg("trainer.bleu_at_end=false", "trainer.max_update=30"))
    assert s["status"] == "completed" and s["updates"] == 30
    assert [r["update"] for r in records(run)] == [5, 10, 15, 20, 25, 30]  # 11-20 redone, not duplicated


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_then_the_run_is_marked_diverged(tmp_path, make_cfg, monkeypatch):
    from adafactor_repro.train import step

    real = step.label_smoothed_nll_loss
    calls = {"n": 0}

    def flaky(logits, target, eps, pad):
        loss, nll = real(logits, target, eps, pad)
        if not torch.is_grad_enabled():  # validation shares the forward; only training batches are bad
            return loss, nll
        calls["n"] += 1
        # call 3 is one bad batch (skipped, training goes on); from call 13 on every batch is bad
        return (loss * float("nan"), nll) if calls["n"] == 3 or calls["n"] >= 13 else (loss, nll)

    monkeypatch.setattr(step, "label_smoothed_nll_loss", flaky)
    torch.manual_seed(0)
    s = train(make_cfg("trainer.max_consecutive_nonfinite=4", "trainer.val_interval=5",
                       "trainer.save_interval=5"))
    run = tmp_path / "run"
    assert s["status"] == "diverged" and s["diverged_at"] == 12 and s["nonfinite_total"] == 5
    assert json.loads((run / "summary.json").read_text())["status"] == "diverged"
    state = torch.load(run / "checkpoint_last.pt", weights_only=True)
    assert state["update"] == 10 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert records(run)[-1]["event"] == "diverged"
    # rerunning a diverged run does not retrain it
    assert train(make_cfg("trainer.max_consecutive_nonfinite=4"))["status"] == "diverged"


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_average_then_evaluate_scripts(tmp_path, make_cfg, capsys):
    torch.manual_seed(0)
    train(make_cfg("trainer.bleu_at_end=false", "trainer.max_update=30"))
    run = tmp_path / "run"
    out = _script("average_checkpoints").main([str(run), "--num", "2"])
    assert out == run / "checkpoint_avg2.pt"
    a, b = (torch.load(run / f"checkpoint_{u}.pt", weights_only=True)["model"] for u in (20, 30))
    avg = torch.load(out, weights_only=True)["model"]
    k = next(k for k in avg if avg[k].is_floating_point() and not torch.equal(a[k], b[k]))
    torch.testing.assert_close(avg[k], (a[k] + b[k]) / 2)

    res = _script("evaluate").main([f"run_dir={run}", "checkpoint=checkpoint_avg2.pt", "beam=1",
                                    "splits=[test]", "max_sentences=5"])
    assert set(res) == {"test@checkpoint_avg2"} and res["test@checkpoint_avg2"]["sentences"] == 5
    assert res["test@checkpoint_avg2"]["update"] == 30 and res["test@checkpoint_avg2"]["beam"] == 1
    bleu = json.loads((run / "bleu.json").read_text())
    assert bleu["test@checkpoint_avg2"]["bleu"] == res["test@checkpoint_avg2"]["bleu"]
    assert len((run / "hyp@checkpoint_avg2.test.txt").read_text().splitlines()) == 5
    with pytest.raises(SystemExit) as e:
        _script("evaluate").main([f"run_dir={run}", "beem=4"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("evaluate.py: error: unknown keys ['beem']; known: run_dir,") and "\n" not in err


@pytest.mark.slow
def test_sigterm_saves_and_the_rerun_finishes(tmp_path, make_cfg, monkeypatch):
    """SLURM preemption / scancel: the update in flight finishes, checkpoint_last.pt is written, exit."""
    import os
    import signal

    from adafactor_repro.train import loop

    real = loop._log_train

    def term(logger, optimizer, scheduler, win, num_updates, *a, **k):
        rec = real(logger, optimizer, scheduler, win, num_updates, *a, **k)
        if num_updates == 15:
            os.kill(os.getpid(), signal.SIGTERM)
        return rec

    monkeypatch.setattr(loop, "_log_train", term)
    handler_before = signal.getsignal(signal.SIGTERM)
    torch.manual_seed(0)
    s = train(make_cfg("trainer.bleu_at_end=false", "trainer.max_update=20"))
    assert s["status"] == "running" and s["updates"] == 15
    assert torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)["update"] == 15
    assert signal.getsignal(signal.SIGTERM) == handler_before  # the loop's handler is removed again
    monkeypatch.undo()
    s = train(make_cfg("trainer.bleu_at_end=false", "trainer.max_update=20"))
    assert s["status"] == "completed" and s["updates"] == 20


def test_a_clean_run_leaves_the_process_group_through_the_barrier(tmp_path, make_cfg, monkeypatch):
    """A run that ends normally asks cleanup for the barrier (D.cleanup's docstring: a teardown deadlock)."""
    from adafactor_repro.train import loop

    closed = []
    monkeypatch.setattr(loop.D, "cleanup", lambda ok=True: closed.append(ok))
    train(make_cfg())
    assert closed == [True]


def test_a_crash_in_setup_still_closes_the_process_group(tmp_path, make_cfg, monkeypatch):
    """One `finally` closes everything: the process group goes even when the run dies before its loop."""
    from adafactor_repro.train import loop

    closed = []
    monkeypatch.setattr(loop.D, "cleanup", lambda ok=True: closed.append(ok))

    def boom(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(loop.Trainer, "setup", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        train(make_cfg())
    assert closed == [False]  # closed, without the barrier of a clean end (a peer may never reach it)
