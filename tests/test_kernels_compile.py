"""The compile tier: every Triton kernel the optimizer launches, compiled for sm_80 / sm_90 / sm_100 with the
triton wheel's own ptxas (no GPU, no driver), through the optimizer's launch path (bench/kernels.py). The
interpreter tests cannot catch a kernel that does not type-check (issue 16); this can. Fails on a compile error
or a register spill, and on a stale results/gpu/kernels.md."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def test_every_kernel_compiles_for_every_target_without_spills(tmp_path, repo_root):
    out = tmp_path / "kernels.md"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled mode (conftest sets 1)
    env["PYTHONPATH"] = str(repo_root / "src") + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, str(repo_root / "scripts" / "compile_kernels.py"), "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    text = out.read_text()
    for kernel in ("phase1", "phase2", "phase3"):
        for target in ("sm_80", "sm_90", "sm_100"):
            assert f"| {kernel} |" in text and target in text
    assert "FAILED" not in text
    # Both parameter dtypes and both gradient dtypes are among the recorded specialisations.
    for spec in ("X_BF16=False, G_BF16=False", "X_BF16=True, G_BF16=True", "X_BF16=False, G_BF16=True"):
        assert spec in text
    # With the alignment hint (Transformer base's shapes), the streaming kernels load 128 bits at a time.
    rows = [r.split("|") for r in text.splitlines() if "ALIGN=True" in r and r.startswith("| phase")]
    assert rows and all(r[8].strip() == "yes" for r in rows), [r for r in rows if r[8].strip() != "yes"]
    committed = repo_root / "results" / "gpu" / "kernels.md"
    import triton

    if f"triton {triton.__version__} " in committed.read_text():
        assert committed.read_text() == text, "results/gpu/kernels.md is stale: run `make kernels`"


def test_bytes_moved_table_in_the_docs_is_current(repo_root):
    from adafactor_repro.bench import kernels as K

    table = K.bytes_table()
    assert table in (repo_root / "docs" / "optimizer.md").read_text(), "docs/optimizer.md: paste bytes_table()"
    base = K.bytes_per_step(K.transformer_shapes(distinct=False))
    assert 60e6 < base["params"] < 61e6 and base["adam"] == 28 * base["params"]
    assert base["adafactor"] / base["adam"] <= 0.85  # the model's prediction meets the target
