"""`make gpu-check` runs on CPU with tiny settings, through the Makefile and the script, so the GPU check cannot
rot where no GPU is at hand (its figures then describe nothing but that it runs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from adafactor_repro.bench import gpu_check as G


def _table(text: str, title: str) -> list[list[str]]:
    block = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()
            if line.startswith("|") and not line.startswith("|---")][1:]


@pytest.mark.slow
def test_make_gpu_check_runs_every_section_on_cpu(tmp_path, toy_corpus, repo_root):
    out = tmp_path / "gpu" / "check.md"
    args = f"--smoke --out {out} --data-dir {toy_corpus} data.root={tmp_path / 'data'}"
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    p = subprocess.run(["make", "-s", "-C", str(repo_root), "gpu-check", f"PY={sys.executable}", "STAMP=",
                        f"ARGS={args}"], capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    text = out.read_text()
    assert "No GPU: a smoke run on CPU" in text and "Skipped" not in text
    assert text.startswith("# GPU check: SMOKE RUN ON CPU")

    optim = {r[0]: r for r in _table(text, "Optimizer step")}
    assert optim["torch.optim.Adam fused"][2] == "1.00"
    for name in ("Adafactor (this, beta1=0, C kernel)", "Adafactor (this, beta1=0, eager)",
                 "torch.optim.Adafactor foreach"):
        assert float(optim[name][1]) > 0, optim[name]

    thr = _table(text, "Training throughput at the paper's batch")
    assert [(r[0], r[1]) for r in thr] == [("adam", "no"), ("adafactor", "no")]
    assert all(float(r[3].replace(",", "")) > 0 for r in thr)
    assert re.search(r"Adafactor / Adam update time \d\.\d{3}", text)

    syncs = _table(text, "Host syncs per update")
    assert [(r[0], r[1]) for r in syncs] == [("adam", "1"), ("adafactor", "1")]  # the finite check only

    kern = text.split("## Triton kernels", 1)[1]
    assert "| phase1 |" in kern and "sm_90 (H100/H200)" in kern and "problems" not in kern

    run = _table(text, "A short run of the real loop, BLEU on newstest2013")
    assert run[0][:2] == ["4", "completed"] and float(run[0][3]) >= 0.0


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is here")
def test_gpu_check_without_cuda_refuses_in_one_line(tmp_path, repo_root):
    out = tmp_path / "check.md"
    for extra in ([], ["--device", "cuda"]):
        p = subprocess.run([sys.executable, str(repo_root / "scripts" / "gpu_check.py"), "--out", str(out), *extra],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        assert p.returncode == 2 and p.stdout == "" and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "no CUDA device" in p.stderr and not out.exists()


def test_gpu_settings_fit_the_paper_and_the_budget():
    s = G.CheckSettings()
    assert s.tokens_per_batch == 4096 and s.model == {} and s.budget_s <= 8 * 60
    assert "scale=gpu" in s.train_overrides and "data=wmt14_local_dev" in s.train_overrides
    batch = G.synthetic_batch(G.tiny())
    assert batch["src_tokens"].numel() == batch["target"].numel() == 256 == batch["ntokens"]
