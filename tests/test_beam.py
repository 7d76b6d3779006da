"""Beam search: greedy equivalence, exactness on an enumerable space, batching, length limits, translate()."""

import itertools
import math

import pytest
import torch

from adafactor_repro.evaluate import beam_search, length_penalty, translate
from adafactor_repro.model import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Transformer, TransformerConfig


def make_model(vocab=40, seed=0, train_steps=60):
    """A tiny model briefly trained to reverse its source: peaked but imperfect distributions, so hypotheses
    have varied lengths and beams disagree (a random tied-embedding model just repeats one token)."""
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=vocab, d_model=32, n_heads=4, ffn_dim=64, encoder_layers=2,
                            decoder_layers=2, dropout=0.1, attention_dropout=0.1, activation_dropout=0.1,
                            max_positions=64)
    model = Transformer(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(train_steps):
        lens = torch.randint(1, 9, (32,), generator=g)
        src = torch.full((32, 9), PAD_ID)
        tgt = torch.full((32, 9), PAD_ID)
        for i, n in enumerate(lens.tolist()):
            ids = torch.randint(4, vocab, (n,), generator=g)
            src[i, :n], src[i, n] = ids, EOS_ID
            tgt[i, :n], tgt[i, n] = ids.flip(0), EOS_ID
        prev = torch.cat([torch.full((32, 1), BOS_ID), tgt[:, :-1]], 1).masked_fill(tgt.eq(PAD_ID), PAD_ID)
        prev[:, 0] = BOS_ID
        prev = prev.masked_fill(prev.eq(EOS_ID), PAD_ID)
        loss = torch.nn.functional.cross_entropy(model(src, prev).flatten(0, 1), tgt.flatten(),
                                                 ignore_index=PAD_ID)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def sources(vocab=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = [6, 3, 8, 5]
    src = torch.full((len(lens), max(lens)), PAD_ID)
    for i, n in enumerate(lens):
        src[i, : n - 1] = torch.randint(4, vocab, (n - 1,), generator=g)
        src[i, n - 1] = EOS_ID
    return src


def reference_greedy(model, src, max_len):
    """Greedy decoding with the full (uncached) forward pass, one sentence at a time."""
    model.eval()
    out = []
    for row in src:
        s = row[row.ne(PAD_ID)][None]
        prev = torch.tensor([[BOS_ID]])
        hyp = []
        for _ in range(max_len + 1):
            logits = model(s, prev)[0, -1].clone()
            logits[[PAD_ID, BOS_ID]] = -math.inf
            if len(hyp) == max_len:
                break
            tok = int(logits.argmax())
            if tok == EOS_ID:
                break
            hyp.append(tok)
            prev = torch.cat([prev, torch.tensor([[tok]])], dim=1)
        out.append(hyp)
    return out


@pytest.fixture(scope="module")
def model():
    return make_model()


def test_beam_1_equals_greedy(model):
    src = sources()
    hyps = beam_search(model, src, beam=1, max_len_a=0.0, max_len_b=12)
    assert model.training  # beam_search restores the mode it found
    assert hyps == reference_greedy(model, src, max_len=12)
    assert len({len(h) for h in hyps}) > 1  # some stopped at eos, so eos handling is exercised


def test_beam_is_exact_when_it_can_hold_every_hypothesis():
    # unk + 3 real tokens, at most 2 before eos: 1 + 4 + 16 = 21 hypotheses. With beam 32 every one stays
    # alive, every eos proposal lies among the first `beam` candidates and is kept: the search is exhaustive.
    model = make_model(vocab=7, seed=3).eval()
    src = sources(vocab=7)[:2]
    hyps, scores = beam_search(model, src, beam=32, lenpen=0.6, max_len_a=0.0, max_len_b=2, return_scores=True)
    for i in range(src.size(0)):
        s = src[i][src[i].ne(PAD_ID)][None]
        best = (-math.inf, None)
        for n in range(3):
            for seq in itertools.product([UNK_ID, 4, 5, 6], repeat=n):
                prev = torch.tensor([[BOS_ID, *seq]])
                lp = torch.log_softmax(model(s, prev)[0], -1)  # pad/bos are banned, not renormalised away
                total = sum(lp[t, tok].item() for t, tok in enumerate([*seq, EOS_ID]))
                best = max(best, (total / length_penalty(n + 1, 0.6), list(seq)), key=lambda x: x[0])
        assert hyps[i] == best[1]
        assert scores[i] == pytest.approx(best[0], abs=1e-5)


def test_batched_equals_one_by_one(model):
    src = sources()
    batched, scores = beam_search(model, src, beam=4, max_len_b=10, return_scores=True)
    for i in range(src.size(0)):
        row = src[i][src[i].ne(PAD_ID)][None]
        one, one_score = beam_search(model, row, beam=4, max_len_b=10, return_scores=True)
        assert one == [batched[i]]
        assert one_score[0] == pytest.approx(scores[i], abs=1e-5)


def test_length_limits(model):
    src = sources()
    hyps = beam_search(model, src, beam=3, max_len_a=0.0, max_len_b=7, min_len=7)
    assert [len(h) for h in hyps] == [7] * src.size(0)  # eos forbidden before 7 tokens, forced after
    want = torch.tensor([2, 5, 1, 4])  # per-sentence lengths: eos forbidden before, forced at
    assert [len(h) for h in beam_search(model, src, beam=3, min_len=want, max_len=want)] == want.tolist()
    src_lens = src.ne(PAD_ID).sum(1).tolist()
    hyps = beam_search(model, src, beam=3, max_len_a=1.0, max_len_b=-2)
    assert all(len(h) <= n - 2 for h, n in zip(hyps, src_lens))
    assert all(EOS_ID not in h and BOS_ID not in h and PAD_ID not in h for h in hyps)
    with pytest.raises(ValueError, match="beam"):
        beam_search(model, src, beam=0)


class CharTokenizer:
    """Stand-in for adafactor_repro.data.Tokenizer: one id per character of a small alphabet."""

    alphabet = "abcdefghij "

    def encode(self, s):
        return [4 + self.alphabet.index(c) for c in s]

    def decode(self, ids):
        return "".join(self.alphabet[i - 4] for i in ids if i >= 4)


def test_translate_keeps_order_and_batching_does_not_change_results():
    model = make_model(vocab=4 + len(CharTokenizer.alphabet))
    sents = ["abc", "j", "a bad idea", "", "cafe", "ddd"]
    tok = CharTokenizer()
    one_batch = translate(model, tok, sents, beam=2, batch_tokens=10_000, max_len_b=8)
    seen = []
    small = translate(model, tok, sents, beam=2, batch_tokens=12, max_len_b=8, progress=seen.append)
    assert small == one_batch and len(small) == len(sents)
    assert len(seen) > 1 and seen[-1] == len(sents)  # several batches
    src = torch.tensor([tok.encode("cafe") + [EOS_ID]])
    assert one_batch[4] == tok.decode(beam_search(model, src, beam=2, max_len_b=8)[0])


def test_translate_with_the_project_tokenizer_and_collate(tmp_path):
    """End to end with the data package: a sentencepiece model trained here, its Tokenizer, collate's layout."""
    spm = pytest.importorskip("sentencepiece")
    from adafactor_repro.data import Tokenizer, collate

    text = ["a small house by the river", "the red car is fast", "ein kleines Haus am Fluss",
            "das rote Auto ist schnell", "the house is red", "das Haus ist rot"] * 20
    (tmp_path / "corpus.txt").write_text("\n".join(text) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "spm"),
                                   vocab_size=32, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                                   minloglevel=2, character_coverage=1.0)
    tok = Tokenizer(tmp_path / "spm.model")
    model = make_model(vocab=tok.vocab_size, train_steps=0)
    sents = ["the red house", "ein Auto", "a small river is fast"]
    out = translate(model, tok, sents, beam=3, max_len_b=6)
    batch = collate([(tok.encode(s), tok.encode(s)) for s in sents])
    hyps = beam_search(model, batch["src_tokens"], beam=3, max_len_b=6)
    assert out == [tok.decode(h) for h in hyps]


def test_a_search_step_reads_the_device_once():
    """On a GPU every read drains the launch queue. A step reads its eos proposals and nothing else; a step
    that finishes hypotheses also reads their scores, beams and tokens (3 reads). Here every sentence must end
    at step L (eos forbidden before, forced at), so the search runs L + 1 steps and finishes once."""
    from adafactor_repro.bench.syncs import HostSyncCounter

    model, src, L = make_model(train_steps=0), sources(), 6
    with HostSyncCounter() as c:
        hyps = beam_search(model, src, beam=3, min_len=L, max_len=torch.full((src.size(0),), L))
    assert [len(h) for h in hyps] == [L] * src.size(0)
    # 1: the length limits; 1: init_cache asks whether the sources have padding; L + 1 steps; 3 at the finish
    assert c.ops == {"tolist": 1 + (L + 1) + 3, "is_nonzero": 1}, c.ops
