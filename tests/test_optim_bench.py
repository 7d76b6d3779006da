"""The optimizer benchmark (adafactor_repro.bench.optim) runs end to end on a tiny parameter set; its
default parameter set is the project's Transformer base. No timing is asserted."""

from __future__ import annotations

import pytest
import torch

from adafactor_repro.bench import optim as bench_optim


def test_default_parameter_set_is_the_transformer_base():
    shapes = bench_optim.transformer_base_shapes()
    assert len(shapes) == 197
    assert sum(torch.Size(s).numel() for s in shapes) == 60_524_544
    assert shapes.count((32000, 512)) == 1  # one shared embedding / softmax matrix


def test_bench_rows_and_report(tmp_path):
    shapes = [(64, 32), (32,), (2, 16, 24)]
    rows = bench_optim.bench("cpu", steps=2, warmup=1, cpu_steps=1, shapes=shapes,
                             only=["this, beta1=0,", "Adam fused"])  # fmt: skip
    by = {r["name"]: r for r in rows}
    adam = by[bench_optim.REFERENCE]
    assert adam["ratio"] == 1.0 and adam["cpu_ratio"] == 1.0
    n = 64 * 32 + 32 + 2 * 16 * 24
    assert adam["state"] >= 8 * n and all(r["params"] == n and r["tensors"] == 3 for r in rows)
    eager = by["Adafactor (this, beta1=0, eager)"]
    # below min_dim_size_to_factor (128) nothing is factored: a full V and no momentum, half of Adam's state
    assert 4 * n <= eager["state"] < adam["state"] * 0.6
    text = bench_optim.markdown(rows, torch.device("cpu"), "python scripts/bench_optim.py", 2, 1, 1, (0.0, 0.0))
    assert "| torch.optim.Adam fused |" in text and "1-thread CPU" in text and len(text.splitlines()) == 9 + len(rows)


def test_cuda_bench_refuses_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="GPU"):
        bench_optim.run_cuda_bench(steps=1, warmup=0)
