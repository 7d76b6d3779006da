"""The paper's Table 3 cells (Section 8.1) compose to what the paper says they are, at both scales: three
token-embedding schemes (init sigma x multiplier) under Adam (Vaswani et al.'s settings) and Adafactor (Algorithm 6),
an untied softmax, 50k updates of 16,384 tokens at the gpu scale, and the declared uniform time map at the cpu scale."""

from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

SCHEMES = {"scaled": (None, True), "unit": (1.0, False), "small": (None, False)}


def _compose(repo_root, overrides):
    with initialize_config_dir(str(repo_root / "configs"), version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("opt", ["adam", "adafactor"])
def test_table3_cell_composes(repo_root, opt, scheme):
    gpu = _compose(repo_root, [f"experiments=table3_{opt}_{scheme}", "schedule=own", "scale=gpu"])
    std, mult = SCHEMES[scheme]
    assert (gpu.model.embed_init_std, gpu.model.scale_embedding) == (std, mult)
    assert gpu.model.share_decoder_input_output_embed is False
    assert gpu.table3_scheme == scheme and gpu.paper_row is None  # never tabulated as a Table 2 row
    assert (gpu.trainer.max_update, gpu.trainer.tokens_per_update) == (50000, 16384)
    sched = instantiate(gpu.schedule)
    if opt == "adam":
        assert gpu.optim._target_ == "torch.optim.Adam" and list(gpu.optim.betas) == [0.9, 0.98]
        # Vaswani et al. eq. (3): d^-0.5 * min(t^-0.5, t * 4000^-1.5), peak at t = 4000
        for t in (1, 4000, 20000):
            assert math.isclose(sched(t - 1), 512 ** -0.5 * min(t ** -0.5, t * 4000 ** -1.5), rel_tol=1e-9)
    else:
        o = gpu.optim
        assert (o.beta1, o.beta2, o.decay_exponent, o.clip_threshold, o.factored, o.scale_parameter) == \
            (0.0, None, 0.8, 1.0, True, True)
        for t in (1, 9999, 40000):  # rho_t = min(1e-2, 1/sqrt(t))
            assert math.isclose(sched(t - 1), min(1e-2, t ** -0.5), rel_tol=1e-9)
    cpu = _compose(repo_root, [f"experiments=table3_{opt}_{scheme}", "schedule=own", "scale=cpu"])
    assert (cpu.trainer.max_update, cpu.trainer.tokens_per_update, cpu.trainer.max_tokens) == (1000, None, 512)
    # the declared map: the paper's 50k updates onto the cpu scale's 1,000
    assert instantiate(cpu.schedule).paper_time(1000) == 50_000


def test_embedding_scheme_switches_the_model():
    from adafactor_repro.model import Transformer, TransformerConfig

    base = dict(vocab_size=300, d_model=64, n_heads=4, ffn_dim=128, encoder_layers=1, decoder_layers=1)
    torch.manual_seed(0)
    tied = Transformer(TransformerConfig(**base))
    torch.manual_seed(0)
    same = Transformer(TransformerConfig(**base, embed_init_std=None, share_decoder_input_output_embed=True))
    # the default draws the same numbers as before the switches existed: every tensor equal
    assert all(torch.equal(a, b) for a, b in zip(tied.state_dict().values(), same.state_dict().values()))
    unit = Transformer(TransformerConfig(**base, embed_init_std=1.0, scale_embedding=False,
                                         share_decoder_input_output_embed=False))
    w = unit.embed_tokens.weight[4:]
    assert 0.9 < float(w.std()) < 1.1 and unit.embed_scale == 1.0
    assert unit.softmax is not None and unit.softmax.weight.shape == (300, 64)
    assert 0.8 * 64 ** -0.5 < float(unit.softmax.weight.std()) < 1.2 * 64 ** -0.5
    h = torch.randn(2, 64)
    assert torch.allclose(unit.output_projection(h), h @ unit.softmax.weight.T)
    assert torch.allclose(tied.output_projection(h), h @ tied.embed_tokens.weight.T)
    with pytest.raises(ValueError, match="embed_init_std"):
        TransformerConfig(**base, embed_init_std=0.0)
