"""Batched beam search with the decoder's key/value cache, and ``translate`` for raw sentences.

The search is fairseq's ``SequenceGenerator`` scheme: at each step every sentence's beams propose their
2*beam best continuations; an eos among the first ``beam`` proposals finishes a hypothesis, the best ``beam``
non-eos proposals stay alive, and a sentence is done once it holds ``beam`` finished hypotheses (or reaches its
maximum length, where eos is forced). Finished hypotheses are ranked by log-probability divided by the GNMT
length penalty ((5 + |Y|) / 6)^alpha (Wu et al. 2016, eq. 14; Vaswani et al. section 6.1 use beam 4,
alpha 0.6, max length source + 50). |Y| counts the eos. Finished sentences leave the batch, so the last
long sentence does not drag the whole batch through the decoder. Beam 1 is exactly greedy decoding.

On CUDA the model runs under bf16 autocast by default (``precision="auto"``; the scores and the search stay
fp32): decoding is bound by the small per-step matmuls and the cache reads, which bf16 halves. On CPU it
runs in fp32. The decoder's key/value cache is preallocated for the longest hypothesis the batch allows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from adafactor_repro.model import BOS_ID, EOS_ID, PAD_ID, Transformer

if TYPE_CHECKING:  # evaluate/ may import the data Tokenizer type only
    from adafactor_repro.data import Tokenizer


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty lp(Y) = ((5 + |Y|) / (5 + 1))^alpha (Wu et al. 2016, eq. 14)."""
    return ((5.0 + length) / 6.0) ** alpha


def autocast_dtype(precision: str | None, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA, none (fp32) elsewhere; ``bf16`` / ``fp32`` as asked."""
    if precision in (None, "auto"):
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"decoding precision={precision!r}: use auto, bf16 or fp32")
    return torch.bfloat16 if precision == "bf16" else None


@torch.inference_mode()
def beam_search(model: Transformer, src_tokens: Tensor, beam: int = 4, lenpen: float = 0.6,
                max_len_a: float = 1.0, max_len_b: int = 50, min_len: int | Tensor = 0,
                max_len: Tensor | None = None, return_scores: bool = False, precision: str = "auto"):
    """Translate a padded batch ``src_tokens`` [B, S] (each row ends with eos, right-padded).

    Returns, in input order, the best hypothesis of each sentence as a list of token ids without bos/eos
    (and, with ``return_scores``, a list of their length-normalised log-probabilities too).
    A hypothesis has at most ``floor(max_len_a * src_len + max_len_b)`` tokens before its eos (src_len counts
    the source's eos, as fairseq), capped by ``max_positions``, or ``max_len`` (one per sentence) if given;
    eos is forbidden before ``min_len`` tokens (an int, or one per sentence). ``precision``: see the module.
    """
    if beam < 1:
        raise ValueError(f"beam_search: beam={beam}; need beam >= 1")
    if src_tokens.dim() != 2 or src_tokens.size(0) == 0:
        raise ValueError(f"beam_search: src_tokens must be a non-empty [batch, length] tensor, got "
                         f"{tuple(src_tokens.shape)}")
    dtype = autocast_dtype(precision, src_tokens.device)
    was_training = model.training
    model.eval()  # dropout off; restored below
    try:
        with torch.autocast(src_tokens.device.type, dtype=dtype, enabled=dtype is not None):
            return _beam_search(model, src_tokens, beam, lenpen, max_len_a, max_len_b, min_len, max_len,
                                return_scores)
    finally:
        model.train(was_training)


def _beam_search(model, src_tokens, K, lenpen, max_len_a, max_len_b, min_len, max_len, return_scores):
    B, device = src_tokens.size(0), src_tokens.device
    V = model.cfg.vocab_size
    if max_len is None:
        src_lens = src_tokens.ne(PAD_ID).sum(1)
        max_len = (max_len_a * src_lens.double() + max_len_b).floor().long()
    # the decoder input holds bos + tokens, so a hypothesis has at most max_positions - 1 tokens
    max_len = torch.as_tensor(max_len, device=device).long().clamp(0, model.cfg.max_positions - 1).expand(B)
    min_len = torch.as_tensor(min_len, device=device).long().expand(B)
    max_len = torch.maximum(max_len, min_len)
    # One host read per batch: the length limits. From them the host knows, with no further read, at which
    # step each sentence must end and whether any still forbids eos, so a step's only read is its eos
    # proposals (on a GPU each read drains the launch queue).
    max_len_h, min_len_h = torch.stack([max_len, min_len]).tolist()

    # Step 0 runs on one row per sentence (all beams would be identical); the cache is then expanded to
    # K rows per sentence by the first reordering below. Its size: bos + the longest hypothesis + its eos.
    cache = model.init_cache(model.encode(src_tokens), max_len=max(max_len_h) + 2)
    tokens = torch.full((B, 1), BOS_ID, dtype=torch.long, device=device)
    scores = torch.zeros(B, 1, device=device)  # cumulative log-probabilities of the live beams
    active_h = list(range(B))  # original index of each sentence still in the batch, on the host ...
    active = torch.arange(B, device=device)  # ... and on the device, for the per-sentence length masks
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    not_eos = torch.arange(V, device=device).ne(EOS_ID)
    cand_rank = torch.arange(2 * K, device=device)

    step = 0
    while active_h:
        n, k_now = scores.shape
        lprobs = torch.log_softmax(model.decode_step(tokens[:, -1], cache).float(), dim=-1)
        lprobs[:, PAD_ID] = -math.inf
        lprobs[:, BOS_ID] = -math.inf
        if any(min_len_h[s] > step for s in active_h):  # eos forbidden before min_len
            lprobs[:, EOS_ID].masked_fill_(_per_beam(min_len[active] > step, k_now), -math.inf)
        at_max_h = [max_len_h[s] <= step for s in active_h]  # these sentences end now, with eos's log-prob
        if any(at_max_h):
            lprobs.masked_fill_(_per_beam(max_len[active] <= step, k_now)[:, None] & not_eos, -math.inf)

        cand = (scores[:, :, None] + lprobs.view(n, k_now, V)).view(n, k_now * V)
        top_scores, top_idx = cand.topk(min(2 * K, k_now * V), dim=1)
        top_beam, top_tok = top_idx // V, top_idx % V
        is_eos = top_tok.eq(EOS_ID) & top_scores.isfinite()

        # Finish hypotheses ending in eos among the first K proposals (fairseq's rule). The step's one read;
        # the scores and tokens are read only on steps that finish something.
        fin = [(i, j) for i, row in enumerate(is_eos[:, :K].tolist()) for j, e in enumerate(row) if e]
        if fin:
            lp = length_penalty(step + 1, lenpen)
            fin_scores, fin_beams = top_scores[:, :K].tolist(), top_beam[:, :K].tolist()
            hyp_tokens = tokens[:, 1:].tolist()
            for i, j in fin:
                store = finished[active_h[i]]
                if len(store) < K:
                    store.append((fin_scores[i][j] / lp, hyp_tokens[i * k_now + fin_beams[i][j]]))
        keep_h = [i for i, s in enumerate(active_h) if not at_max_h[i] and len(finished[s]) < K]

        # The K best non-eos proposals continue (stable order: eos ones sorted after every non-eos one;
        # should fewer than K non-eos be finite, the eos fillers get -inf and never finish).
        keep_pos = (is_eos.long() * 2 * K + cand_rank[: top_idx.size(1)]).topk(
            min(K, top_idx.size(1)), dim=1, largest=False).indices
        scores = top_scores.gather(1, keep_pos).masked_fill(is_eos.gather(1, keep_pos), -math.inf)
        rows = torch.arange(n, device=device)[:, None] * k_now + top_beam.gather(1, keep_pos)
        next_tok = top_tok.gather(1, keep_pos)
        shrink = len(keep_h) < n
        if shrink:  # finished sentences leave the batch
            active_h = [active_h[i] for i in keep_h]
            keep = torch.tensor(keep_h, dtype=torch.long, device=device)
            active, scores, rows, next_tok = (t.index_select(0, keep) for t in (active, scores, rows, next_tok))
        rows = rows.view(-1)
        tokens = torch.cat([tokens.index_select(0, rows), next_tok.view(-1, 1)], dim=1)
        # Reordering beams stays within a sentence, whose encoder keys/values are the same for every beam;
        # only widening the beam (after step 0) or dropping finished sentences changes the encoder side.
        cache.index_select(rows, self_only=not shrink and keep_pos.size(1) == k_now)
        step += 1

    best = [max(hyps, key=lambda h: h[0]) for hyps in finished]
    out = [h[1] for h in best]
    return (out, [h[0] for h in best]) if return_scores else out


def _per_beam(per_sentence: Tensor, k: int) -> Tensor:
    """[n] -> [n * k]: each sentence's value for each of its beams (``repeat_interleave`` without its
    output-size read)."""
    return per_sentence[:, None].expand(-1, k).reshape(-1)


def translate(model: Transformer, tokenizer: Tokenizer, sentences: Sequence[str], beam: int = 4,
              lenpen: float = 0.6, batch_tokens: int = 8192, max_len_a: float = 1.0, max_len_b: int = 50,
              device: torch.device | str | None = None, progress=None, precision: str = "auto") -> list[str]:
    """Translate raw sentences: sentencepiece-encode, batch by length (longest first) within
    ``batch_tokens`` padded source tokens, beam search (in ``precision``, see `beam_search`), detokenize;
    returns translations in input order.
    Sources longer than ``max_positions`` are truncated (keeping the eos). ``progress``, if given, is called
    with the number of sentences finished after each batch."""
    if batch_tokens <= 0:
        raise ValueError(f"translate: batch_tokens={batch_tokens}; need a positive token budget")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    max_src = model.cfg.max_positions
    encoded = [tokenizer.encode(s)[: max_src - 1] + [EOS_ID] for s in sentences]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    out: list[str | None] = [None] * len(encoded)
    i = 0
    while i < len(order):
        width = len(encoded[order[i]])  # longest first, so the first of a batch sets its width
        n = max(1, batch_tokens // width)
        idx = order[i:i + n]
        src = torch.full((len(idx), width), PAD_ID, dtype=torch.long)
        for r, j in enumerate(idx):
            src[r, : len(encoded[j])] = torch.tensor(encoded[j])
        hyps = beam_search(model, src.to(device), beam=beam, lenpen=lenpen, max_len_a=max_len_a,
                           max_len_b=max_len_b, precision=precision)
        for j, h in zip(idx, hyps):
            out[j] = tokenizer.decode(h)
        i += len(idx)
        if progress is not None:
            progress(i)
    return out  # type: ignore[return-value]
