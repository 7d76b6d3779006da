"""trainer.parallel=fsdp: the training loop under torchrun with FSDP2 (2 gloo ranks) trains as the DDP path does
on the same batches, writes the DDP path's single-file checkpoint (full state dicts on rank 0), and resumes on
2 ranks and in 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(tmp_path, toy_corpus, run: Path, *overrides: str, ranks: int = 2) -> None:
    from conftest import TINY

    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 else []
    cmd = [sys.executable, *launch, str(ROOT / "scripts" / "train.py"), f"data.local_dir={toy_corpus}", f"data.root={tmp_path / 'data'}",
           *TINY, "trainer.log_interval=2", "trainer.val_interval=4", "trainer.save_interval=4",
           "trainer.bleu_at_end=false", "model.dropout=0.0", "optim=adafactor", "optim.min_dim_size_to_factor=16",
           f"run_dir={run}", *overrides]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


def _losses(run: Path) -> list[tuple[int, str, float]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["update"], r["split"], r["loss"]) for r in rows if "loss" in r]


@pytest.mark.slow
def test_fsdp_loop_matches_ddp_checkpoints_and_resumes(tmp_path, toy_corpus):
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    _torchrun(tmp_path, toy_corpus, ddp, "trainer.max_update=4")
    _torchrun(tmp_path, toy_corpus, fsdp, "trainer.max_update=4", "trainer.parallel=fsdp")
    a, b = _losses(ddp), _losses(fsdp)
    assert [r[:2] for r in a] == [r[:2] for r in b] and len(a) >= 3
    for (_, _, la), (_, _, lb) in zip(a, b):
        assert lb == pytest.approx(la, rel=1e-4)  # same batches, same dropout-free model, same optimizer
    state = torch.load(fsdp / "checkpoint_last.pt", weights_only=True)
    plain = torch.load(ddp / "checkpoint_last.pt", weights_only=True)
    assert state["parallel"] == "fsdp" and set(state["model"]) == set(plain["model"])
    for k, v in plain["model"].items():  # full, unsharded tensors under the same names
        torch.testing.assert_close(state["model"][k], v, rtol=1e-4, atol=1e-5)
    st = state["optimizer"]["state"]["encoder.0.ffn.fc1.weight"]  # [64, 32], factored, gathered in full
    assert st["exp_avg_sq_row"].shape == (64,) and st["exp_avg_sq_col"].shape == (32,)
    _torchrun(tmp_path, toy_corpus, fsdp, "trainer.max_update=6", "trainer.parallel=fsdp")  # resume
    assert [r[0] for r in _losses(fsdp) if r[1] == "train"] == [2, 4, 6]
    assert json.loads((fsdp / "summary.json").read_text())["status"] == "completed"
    # and one process resumes the 2-rank FSDP checkpoint (the batch of an update kept by update_freq 2)
    _torchrun(tmp_path, toy_corpus, fsdp, "trainer.max_update=8", "trainer.parallel=fsdp", "trainer.update_freq=2",
              ranks=1)
    assert [r[0] for r in _losses(fsdp) if r[1] == "train"] == [2, 4, 6, 8]
