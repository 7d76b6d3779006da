"""Decoding for the GPU: the preallocated key/value cache (written in place, grown only past its capacity;
tests/test_beam.py pins the CPU fp32 results) and bf16 autocast on CUDA."""

from __future__ import annotations

import pytest
import torch
from test_model import batch, tiny_cfg

from adafactor_repro.evaluate import beam_search
from adafactor_repro.evaluate.beam import autocast_dtype
from adafactor_repro.model import Transformer, TransformerConfig


@pytest.mark.parametrize("capacity", [None, 3, 8])
def test_cache_is_written_in_place_and_grows_past_capacity(capacity):
    torch.manual_seed(0)
    model = Transformer(tiny_cfg()).eval()
    src, prev = batch(T=8)
    full = model(src, prev)
    cache = model.init_cache(model.encode(src), max_len=capacity)
    steps, ptrs = [], []
    with torch.no_grad():
        for t in range(prev.size(1)):
            steps.append(model.decode_step(prev[:, t], cache))
            ptrs.append(cache.self_kv[0][0].data_ptr())
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    size = cache.self_kv[0][0].size(2)
    if capacity == 8:  # sized right: one buffer for the whole decode
        assert len(set(ptrs)) == 1 and size == 8
    elif capacity == 3:  # too small: doubled when full (3 -> 6 -> 12), history kept
        assert len(set(ptrs)) == 3 and size == 12
    else:
        assert size == 64


def test_decoding_precision_auto_is_bf16_on_cuda_and_fp32_on_cpu():
    assert autocast_dtype("auto", torch.device("cuda", 0)) is torch.bfloat16
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("fp32", torch.device("cuda", 0)) is None
    with pytest.raises(ValueError, match="use auto, bf16 or fp32"):
        autocast_dtype("fp16", torch.device("cpu"))


def test_bf16_decoding_keeps_a_bf16_cache_and_fp32_scores():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=50, d_model=32, n_heads=4, ffn_dim=64, encoder_layers=1,
                                          decoder_layers=1)).eval()
    src, _ = batch()
    seen = {}
    real_step = model.decode_step

    def spy(tokens, cache):
        out = real_step(tokens, cache)
        seen["cache"], seen["logits"] = cache.self_kv[0][0].dtype, out.dtype
        return out

    model.decode_step = spy
    hyps, scores = beam_search(model, src, beam=2, max_len_b=5, return_scores=True, precision="bf16")
    assert seen == {"cache": torch.bfloat16, "logits": torch.bfloat16}
    assert len(hyps) == src.size(0) and all(isinstance(s, float) for s in scores)
    fp32 = beam_search(model, src, beam=2, max_len_b=5, precision="fp32")
    assert seen["cache"] is torch.float32
    assert beam_search(model, src, beam=2, max_len_b=5) == fp32  # auto on CPU is fp32
