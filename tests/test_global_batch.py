"""The global batch is the invariant of the gpu scales: their configs state tokens per update, the loop splits
them over the ranks, and 2 gloo processes train on the same tokens per update as 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from adafactor_repro.data import update_budget


def _compose(repo_root, *overrides):
    with initialize_config_dir(str(repo_root / "configs"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("scale, tokens", [("gpu", 4096), ("vaswani", 25000)])
def test_gpu_scales_state_tokens_per_update_in_real_tokens(repo_root, scale, tokens):
    t = _compose(repo_root, f"scale={scale}").trainer
    assert (t.tokens_per_update, t.batch_budget, t.update_freq) == (tokens, "real", 1)
    for world in (1, 2, 4, 8):
        per_rank, freq = update_budget(t.tokens_per_update, t.max_tokens, world)
        assert per_rank * freq * world == tokens and per_rank <= t.max_tokens


def test_cpu_scale_keeps_its_padded_per_process_batch(repo_root):
    t = _compose(repo_root, "scale=cpu").trainer
    assert t.tokens_per_update is None and t.batch_budget == "padded" and t.num_workers == 0


TINY = ["data.spm.vocab_size=48", "data.num_workers=1", "data.min_eval_pairs=1", "model.d_model=32", "model.n_heads=2", "model.ffn_dim=64",
        "model.encoder_layers=1", "model.decoder_layers=1", "model.dropout=0", "model.attention_dropout=0",
        "model.activation_dropout=0", "trainer.tokens_per_update=256", "trainer.max_tokens=128",
        "trainer.batch_budget=real", "trainer.max_update=6", "trainer.log_interval=1", "trainer.val_interval=6",
        "trainer.save_interval=6", "trainer.num_threads=1", "trainer.bleu_at_end=false", "logger.mode=disabled",
        "optim=adafactor", "trainer.bleu_interval=3", "eval.max_sentences=5", "eval.beam=2", "eval.max_len_b=8"]


def _train(tmp_path, corpus, name, nproc, *extra):
    repo = Path(__file__).resolve().parents[1]
    run = tmp_path / name
    args = [str(repo / "scripts" / "train.py"), f"data.local_dir={corpus}", f"data.root={tmp_path / 'data'}",
            *TINY, *extra, f"run_dir={run}"]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
           if nproc > 1 else [sys.executable, *args])
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # periodic BLEU: under DDP each rank decodes a shard, rank 0 scores all of them
    assert [(r["update"], r["bleu_sentences"]) for r in recs if "bleu" in r][:2] == [(3, 5), (6, 5)]
    return [r for r in recs if r["split"] == "train"], p.stdout + p.stderr


@pytest.mark.slow
def test_two_processes_train_on_the_tokens_per_update_of_one(tmp_path):
    from conftest import write_toy_corpus

    corpus = write_toy_corpus(tmp_path / "corpus", n_train=224)
    one, log1 = _train(tmp_path, corpus, "one", 1)
    two, log2 = _train(tmp_path, corpus, "two", 2)
    # an even number of batches per epoch, so 2 ranks need not split one: both runs cut the same batches
    import torch

    samplers = [torch.load(tmp_path / r / "checkpoint_last.pt", weights_only=True)["sampler"] for r in ("one", "two")]
    assert samplers[0]["num_batches"] == samplers[1]["num_batches"] and samplers[0]["num_batches"] % 2 == 0
    assert "batches of 128 real tokens x update_freq 2 per update" in log1
    assert "batches of 128 real tokens x update_freq 1 x 2 ranks per update" in log2
    # the same global batches, update for update: 1 process x 2 micro-batches = 2 ranks x 1
    assert [r["tokens_per_update"] for r in one] == [r["tokens_per_update"] for r in two]
    tokens = [r["tokens_per_update"] for r in one]
    assert max(tokens) <= 256 and sum(tokens) / len(tokens) > 0.8 * 256, tokens  # real budget: ~full batches
    for a, b in zip(one, two):  # no dropout: only the reduction order differs
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["gnorm"] == pytest.approx(b["gnorm"], rel=1e-3)

    # preempted on 1 process, resumed on 2: the same global batch, re-split (a warning, not a refusal)
    import shutil

    shutil.copytree(tmp_path / "one", tmp_path / "moved")
    moved, log = _train(tmp_path, corpus, "moved", 2, "trainer.max_update=9")
    assert "resuming from" in log and "resumed with 2 and 128" in log
    assert [r["update"] for r in moved][-3:] == [7, 8, 9]
    assert all(r["tokens_per_update"] <= 256 for r in moved[-3:])


def test_tokens_per_update_with_update_freq_is_refused():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from adafactor_repro.train.loop import Trainer

    def plan(world, **t):
        cfg = OmegaConf.create({"max_tokens": 4096, "update_freq": 1, "tokens_per_update": None, **t})
        return Trainer._batch_plan(SimpleNamespace(t=cfg, dist=SimpleNamespace(world_size=world)))

    assert plan(8) == (4096, 1) and plan(8, update_freq=3) == (4096, 3)  # no global batch: per rank as given
    assert plan(1, tokens_per_update=25000) == (3125, 8) and plan(8, tokens_per_update=25000) == (3125, 1)
    with pytest.raises(ValueError, match=r"tokens_per_update=4096 and trainer.update_freq=2 both set"):
        plan(1, tokens_per_update=4096, update_freq=2)
    with pytest.raises(ValueError, match=r"cannot be split evenly over 3 rank"):
        plan(3, tokens_per_update=4096)
