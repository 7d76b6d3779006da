"""Cross-check against an independent implementation: with our weights copied in, Hugging Face's
MarianMTModel (post-norm, shared embeddings) computes the same logits, so the architecture matches."""

import pytest
import torch

from adafactor_repro.model import BOS_ID, EOS_ID, PAD_ID, Transformer, TransformerConfig

pytest.importorskip("transformers")


def test_post_norm_model_equals_marian():
    from adafactor_repro.bench import train as bench

    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=60, d_model=32, n_heads=4, ffn_dim=48, encoder_layers=2, decoder_layers=2,
                            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pre_norm=False,
                            max_positions=32)
    model = Transformer(cfg).eval()
    marian = bench.make_marian(cfg).eval()
    # the check must be able to fail: before copying, outputs differ
    batches = bench.token_batches([(7, 6), (5, 4), (7, 3)], max_tokens=64, vocab=60, n_batches=1)
    with pytest.raises(RuntimeError, match="disagree"):
        bench.check_same_function(model, marian, batches[0])
    bench.copy_weights_to_marian(model, marian)
    src, prev, _ = batches[0]
    assert src.eq(PAD_ID).any() and prev[:, 0].eq(BOS_ID).all() and src.eq(EOS_ID).sum() == src.size(0)
    with torch.inference_mode():
        ours = model(src, prev)
        theirs = marian(input_ids=src, attention_mask=src.ne(PAD_ID), decoder_input_ids=prev).logits
    keep = prev.ne(PAD_ID)
    torch.testing.assert_close(ours[keep], theirs[keep], atol=1e-5, rtol=1e-5)
