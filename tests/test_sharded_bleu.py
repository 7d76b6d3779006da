"""Periodic BLEU under DDP: every rank decodes its shard of the sentences, rank 0 reassembles them in order and
scores; the result is the unsharded one (simulated ranks in one process; tests/test_global_batch.py runs it
under torchrun)."""

from __future__ import annotations

from types import SimpleNamespace

from adafactor_repro.data import load_tokenizer, prepare
from adafactor_repro.model import Transformer, TransformerConfig
from adafactor_repro.train import evaluation as E


def test_sharded_decoding_reassembles_the_unsharded_hypotheses(tmp_path, make_cfg, monkeypatch):
    import torch

    cfg = make_cfg()
    data_dir = prepare(cfg.data)
    tok = load_tokenizer(data_dir)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=tok.vocab_size, d_model=32, n_heads=2, ffn_dim=64,
                                          encoder_layers=1, decoder_layers=1))
    for d in ("whole", "r0", "r1", "r2"):
        (tmp_path / d).mkdir()
    ev = SimpleNamespace(beam=2, lenpen=0.6, batch_tokens=64, max_len_a=1.0, max_len_b=6)
    whole = E.evaluate_bleu(model, tok, data_dir, ["valid"], ev, tmp_path / "whole", max_sentences=11)

    shards = {}
    for rank in (1, 2, 0):  # rank 0 last: it gathers what the others decoded
        monkeypatch.setattr(E.D, "rank_and_world", lambda r=rank: (r, 3))
        monkeypatch.setattr(E.D, "gather_object", lambda hyps, r=rank: (
            shards.__setitem__(r, hyps) or ([hyps, shards[1], shards[2]] if r == 0 else None)))
        out = E.evaluate_bleu(model, tok, data_dir, ["valid"], ev, tmp_path / f"r{rank}", max_sentences=11,
                              sharded=True)
        if rank:
            assert out == {}  # only rank 0 scores
    assert [len(shards[r]) for r in (0, 1, 2)] == [4, 4, 3]
    assert (tmp_path / "r0" / "hyp.valid.txt").read_text() == (tmp_path / "whole" / "hyp.valid.txt").read_text()
    assert out["valid"]["bleu"] == whole["valid"]["bleu"] and out["valid"]["sentences"] == 11
