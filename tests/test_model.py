"""The Transformer: parameter count, masking, incremental decoding, FLOPs, learning a tiny batch."""

import pytest
import torch
import torch.nn.functional as F

from adafactor_repro.model import BOS_ID, EOS_ID, PAD_ID, Transformer, TransformerConfig, training_flops


def tiny_cfg(**kw):
    base = dict(vocab_size=50, d_model=32, n_heads=4, ffn_dim=64, encoder_layers=2, decoder_layers=2,
                dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pre_norm=True,
                share_all_embeddings=True, scale_embedding=True, max_positions=64)
    base.update(kw)
    return TransformerConfig(**base)


def batch(B=3, S=7, T=6, V=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (B, S), generator=g)
    prev = torch.randint(4, V, (B, T), generator=g)
    prev[:, 0] = BOS_ID
    src[:, -1] = EOS_ID
    src[1, S - 3:] = PAD_ID  # a shorter, right-padded source
    src[1, S - 4] = EOS_ID
    return src, prev


def test_transformer_base_parameter_count_32k_shared_vocab():
    cfg = TransformerConfig(vocab_size=32000)  # defaults = configs/model/transformer_base.yaml
    d, f, L = 512, 2048, 6
    attn, ffn, ln = 4 * (d * d + d), 2 * d * f + f + d, 2 * d
    expected = 32000 * d + L * (attn + ffn + 2 * ln) + L * (2 * attn + ffn + 3 * ln) + 2 * ln
    assert expected == 60_524_544  # "about 60.5M"
    model = Transformer(cfg)
    assert model.num_parameters() == expected
    assert model.num_parameters(exclude_embeddings=True) == expected - 32000 * d
    untied = Transformer(TransformerConfig(vocab_size=32000, share_all_embeddings=False))
    assert untied.num_parameters() == expected + 32000 * d  # a separate source embedding


def test_config_matches_model_yaml_keys(repo_root):
    import yaml

    for name in ("transformer_base", "transformer_small"):
        keys = set(yaml.safe_load((repo_root / "configs/model" / f"{name}.yaml").read_text())) - {"defaults"}
        fields = set(TransformerConfig.__dataclass_fields__) - {"vocab_size", "pad_id"}
        assert keys <= fields, keys - fields


def test_bad_config_and_input_give_clear_errors():
    with pytest.raises(ValueError, match="n_heads"):
        tiny_cfg(n_heads=5)
    model = Transformer(tiny_cfg(max_positions=8))
    with pytest.raises(ValueError, match="max_positions"):
        model(torch.full((1, 9), 5), torch.full((1, 2), BOS_ID))
    with pytest.raises(ValueError, match="src_tokens"):
        model(torch.full((9,), 5), torch.full((1, 2), BOS_ID))


@pytest.mark.parametrize("pre_norm", [True, False])
def test_decoder_is_causal(pre_norm):
    torch.manual_seed(0)
    model = Transformer(tiny_cfg(pre_norm=pre_norm)).eval()
    src, prev = batch()
    ref = model(src, prev)
    for j in range(1, prev.size(1)):
        changed = prev.clone()
        changed[:, j:] = torch.randint(4, 50, changed[:, j:].shape)
        out = model(src, changed)
        torch.testing.assert_close(out[:, :j], ref[:, :j])  # no position sees the future
        assert (out[:, j] - ref[:, j]).abs().max() > 1e-3    # ... but does see its own input


def test_output_mask_selects_positions():
    torch.manual_seed(0)
    model = Transformer(tiny_cfg()).eval()
    src, prev = batch()
    mask = torch.rand(prev.shape) > 0.3
    torch.testing.assert_close(model(src, prev, output_mask=mask), model(src, prev)[mask])


def test_source_padding_is_masked():
    torch.manual_seed(0)
    model = Transformer(tiny_cfg()).eval()
    src, prev = batch()
    more_pad = torch.cat([src, torch.full((src.size(0), 5), PAD_ID)], dim=1)
    torch.testing.assert_close(model(more_pad, prev), model(src, prev))


@pytest.mark.parametrize("pre_norm", [True, False])
def test_incremental_decoding_equals_full_forward(pre_norm):
    torch.manual_seed(0)
    model = Transformer(tiny_cfg(pre_norm=pre_norm, share_all_embeddings=pre_norm)).eval()
    src, prev = batch(T=8)
    full = model(src, prev)
    cache = model.init_cache(model.encode(src))
    steps = [model.decode_step(prev[:, t], cache) for t in range(prev.size(1))]
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    # reordering rows of the cache (as beam search does) keeps each row's history
    cache = model.init_cache(model.encode(src))
    perm = torch.tensor([2, 0, 1])
    model.decode_step(prev[:, 0], cache)
    cache.index_select(perm)
    torch.testing.assert_close(model.decode_step(prev[perm, 1], cache), full[perm, 1], atol=1e-5, rtol=1e-5)


def test_training_flops_match_torch_flop_counter():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    cfg = tiny_cfg(vocab_size=64)
    model = Transformer(cfg)
    src, prev = batch(B=2, S=9, T=5, V=64)
    # The math backend runs attention as bmm's that the counter sees (the fused CPU kernel is not
    # registered with it); it also computes the full causal score matrix, as the formula counts it.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(src, prev).float().sum().backward()
    counted = counter.get_total_flops()
    assert counted > 0
    # FlopCounterMode counts every matmul (forward + backward) and no embedding lookup, as the formula.
    assert training_flops(cfg, tuple(src.shape), tuple(prev.shape)) == pytest.approx(counted, rel=1e-9)


def test_tiny_model_overfits_tiny_batch():
    torch.manual_seed(0)
    model = Transformer(tiny_cfg(vocab_size=20, d_model=64, ffn_dim=128))
    src, prev = batch(B=4, S=6, T=6, V=20, seed=1)
    target = torch.cat([prev[:, 1:], torch.full((4, 1), EOS_ID)], dim=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = F.cross_entropy(model(src, prev).flatten(0, 1), target.flatten(), ignore_index=PAD_ID)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert first > 2.5 and loss.item() < 0.02, (first, loss.item())
    model.eval()
    assert torch.equal(model(src, prev).argmax(-1), target)
