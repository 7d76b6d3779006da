"""Training and beam-search speed of our Transformer against a Hugging Face MarianMTModel of identical
dimensions, measured side by side in one run, on the same batches and the same weights.

    python scripts/bench_train.py                      # small + base, writes results/bench_train.md
    python scripts/bench_train.py --models small --train-steps 3 --beam-sentences 16   # a quick look

Rows:
- training tokens/s (non-pad source + target tokens per second) of one optimizer update: forward, label-
  smoothed cross entropy (0.1) on the logits, backward, Adam step; identical for both models. Steps of the
  two models alternate, so load from other processes hits both alike.
- beam-search sentences/s on newstest2014 sources: every sentence's output is forced to the length of its
  reference (eos forbidden before, the only choice at it), the same rule in both searches, so random weights
  do not make either stop early; ours drops finished sentences from the batch, Marian keeps them.
- the training loop's overhead over the plain forward+backward: see ``bench_loop_overhead``.

Weights are random (speed does not depend on them) but identical: ours are copied into Marian, and the
script checks that both give the same logits. Marian is post-norm only, so both run post-norm here
(``pre_norm=False``); pre-norm differs by two extra LayerNorms. Token ids are random; their lengths are
those of newstest2014 (whitespace words x 1.3, about the sentencepiece ratio), batched by a token budget
like the training sampler.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import config_root, load_group
from ..data import collate
from ..evaluate import beam_search
from ..files import atomic_write_text
from ..machine import machine_header
from ..model import BOS_ID, EOS_ID, PAD_ID, Transformer, TransformerConfig
from ..train.step import to_device, train_step

ROOT = config_root().parent
MODELS = {  # configs/model/<name>.yaml with the vocabulary of the data config that goes with it
    "small": ("transformer_small", 8000),   # multi30k spm vocab
    "base": ("transformer_base", 32000),    # wmt14 spm vocab
}


def model_config(name: str) -> TransformerConfig:
    cfg_name, vocab = MODELS[name]
    keys = load_group(config_root() / "model" / f"{cfg_name}.yaml")
    keys["pre_norm"] = False  # Marian is post-norm; see the module docstring
    return TransformerConfig(vocab_size=vocab, **keys)


# ---- the peer: a MarianMTModel with our weights ---------------------------------------------------------
def make_marian(cfg: TransformerConfig):
    from transformers import MarianConfig, MarianMTModel

    mc = MarianConfig(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers, encoder_attention_heads=cfg.n_heads,
        decoder_attention_heads=cfg.n_heads, encoder_ffn_dim=cfg.ffn_dim, decoder_ffn_dim=cfg.ffn_dim,
        activation_function="relu", dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
        activation_dropout=cfg.activation_dropout, max_position_embeddings=cfg.max_positions,
        scale_embedding=cfg.scale_embedding, pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=BOS_ID,
        decoder_start_token_id=BOS_ID, forced_eos_token_id=None, share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True)
    return MarianMTModel._from_config(mc, attn_implementation="sdpa")


def copy_weights_to_marian(model: Transformer, marian) -> None:
    """Load our (post-norm, shared-embedding) weights into ``marian``; fused q/k/v are split."""
    if model.cfg.pre_norm or not model.cfg.share_all_embeddings:
        raise ValueError("copy_weights_to_marian: Marian is post-norm with shared embeddings; "
                         "build the model with pre_norm=False, share_all_embeddings=True")
    sd = {"model.shared.weight": model.embed_tokens.weight}

    def lin(prefix, w, b):
        sd[prefix + ".weight"], sd[prefix + ".bias"] = w, b

    def split(prefix, names, linear):
        for name, w, b in zip(names, linear.weight.chunk(len(names)), linear.bias.chunk(len(names))):
            lin(f"{prefix}.{name}", w, b)

    for i, layer in enumerate(model.encoder):
        p = f"model.encoder.layers.{i}"
        split(f"{p}.self_attn", ["q_proj", "k_proj", "v_proj"], layer.attn.qkv)
        lin(f"{p}.self_attn.out_proj", layer.attn.out.weight, layer.attn.out.bias)
        lin(f"{p}.self_attn_layer_norm", layer.ln_attn.weight, layer.ln_attn.bias)
        lin(f"{p}.fc1", layer.ffn.fc1.weight, layer.ffn.fc1.bias)
        lin(f"{p}.fc2", layer.ffn.fc2.weight, layer.ffn.fc2.bias)
        lin(f"{p}.final_layer_norm", layer.ln_ffn.weight, layer.ln_ffn.bias)
    for i, layer in enumerate(model.decoder):
        p = f"model.decoder.layers.{i}"
        split(f"{p}.self_attn", ["q_proj", "k_proj", "v_proj"], layer.self_attn.qkv)
        lin(f"{p}.self_attn.out_proj", layer.self_attn.out.weight, layer.self_attn.out.bias)
        lin(f"{p}.self_attn_layer_norm", layer.ln_self.weight, layer.ln_self.bias)
        lin(f"{p}.encoder_attn.q_proj", layer.cross_attn.q.weight, layer.cross_attn.q.bias)
        split(f"{p}.encoder_attn", ["k_proj", "v_proj"], layer.cross_attn.kv)
        lin(f"{p}.encoder_attn.out_proj", layer.cross_attn.out.weight, layer.cross_attn.out.bias)
        lin(f"{p}.encoder_attn_layer_norm", layer.ln_cross.weight, layer.ln_cross.bias)
        lin(f"{p}.fc1", layer.ffn.fc1.weight, layer.ffn.fc1.bias)
        lin(f"{p}.fc2", layer.ffn.fc2.weight, layer.ffn.fc2.bias)
        lin(f"{p}.final_layer_norm", layer.ln_ffn.weight, layer.ln_ffn.bias)
    target = marian.state_dict()
    missing = [k for k in target if k not in sd and "embed_positions" not in k and "final_logits_bias" not in k
               and not k.endswith("embed_tokens.weight") and k != "lm_head.weight"]
    if missing:
        raise RuntimeError(f"copy_weights_to_marian: no source for {missing[:5]}")
    with torch.no_grad():
        for k, v in sd.items():
            target[k].copy_(v)
        for pos in (marian.model.encoder.embed_positions, marian.model.decoder.embed_positions):
            pos.weight.copy_(model.positions[: pos.weight.size(0)])  # t2t sinusoid layout -> Marian's table
        marian.final_logits_bias.zero_()
    if marian.lm_head.weight.data_ptr() != marian.model.shared.weight.data_ptr():
        raise RuntimeError("Marian's output projection is not tied to its embedding")


# ---- batches ------------------------------------------------------------------------------------------
def sentence_lengths(n: int, seed: int = 1) -> list[tuple[int, int]]:
    """(source, target) subword lengths incl. eos/bos: newstest2014 word counts x 1.3, or lognormal."""
    data = ROOT.parent / "shared" / "data" / "wmt14-en-de"
    if (data / "newstest2014.en").is_file():
        en = (data / "newstest2014.en").read_text(encoding="utf-8").split("\n")
        de = (data / "newstest2014.de").read_text(encoding="utf-8").split("\n")
        pairs = [(math.ceil(len(a.split()) * 1.3) + 1, math.ceil(len(b.split()) * 1.3) + 1)
                 for a, b in zip(en, de) if a]
    else:
        g = torch.Generator().manual_seed(seed)
        ln = torch.exp(torch.randn(3003, generator=g) * 0.5 + math.log(28)).long().clamp(3, 150).tolist()
        pairs = [(x, x + 2) for x in ln]
    return pairs[:n]


def token_batches(pairs, max_tokens: int, vocab: int, n_batches: int, seed: int = 1):
    """Length-sorted batches within ``max_tokens`` padded tokens per side, random ids; a fixed sample."""
    g = torch.Generator().manual_seed(seed)
    pairs = sorted(pairs, key=lambda p: max(p))
    batches, cur = [], []
    for p in pairs:
        if cur and (len(cur) + 1) * max(max(max(c) for c in cur), max(p)) > max_tokens:
            batches.append(cur)
            cur = []
        cur.append(p)
    batches.append(cur)
    pick = torch.randperm(len(batches), generator=g)[:n_batches].tolist()
    out = []
    for b in (batches[i] for i in pick):
        S, T = max(p[0] for p in b), max(p[1] for p in b)
        src = torch.full((len(b), S), PAD_ID)
        tgt = torch.full((len(b), T), PAD_ID)
        for r, (s, t) in enumerate(b):
            src[r, : s - 1] = torch.randint(4, vocab, (s - 1,), generator=g)
            src[r, s - 1] = EOS_ID
            tgt[r, : t - 1] = torch.randint(4, vocab, (t - 1,), generator=g)
            tgt[r, t - 1] = EOS_ID
        prev = torch.roll(tgt, 1, dims=1)
        prev[:, 0] = BOS_ID
        prev[prev.eq(EOS_ID)] = PAD_ID  # bos + ids, right-padded (collate's layout)
        out.append((src, prev, tgt))
    return out


# ---- measurements -------------------------------------------------------------------------------------
def loss_fn(logits, target):
    return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=PAD_ID,
                           label_smoothing=0.1, reduction="sum") / target.ne(PAD_ID).sum()


def bench_training(name, model, marian, batches, warmup):
    """Returns tokens/s of: ours (full logits), ours with ``output_mask`` (logits and loss only at non-pad
    targets), Marian. The two variants of ours share one model and optimizer (values do not affect speed)."""
    def ours(s, p, t):
        return loss_fn(model(s, p), t)

    def ours_masked(s, p, t):
        keep = t.ne(PAD_ID)
        return F.cross_entropy(model(s, p, output_mask=keep).float(), t[keep], label_smoothing=0.1,
                               reduction="sum") / keep.sum()

    def hf(s, p, t):
        return loss_fn(marian(input_ids=s, attention_mask=s.ne(PAD_ID), decoder_input_ids=p).logits, t)

    runners = {"ours": ours, "ours_masked": ours_masked, "marian": hf}
    opt_ours = torch.optim.Adam(model.parameters(), lr=1e-4)
    opts = {"ours": opt_ours, "ours_masked": opt_ours, "marian": torch.optim.Adam(marian.parameters(), lr=1e-4)}
    model.train()
    marian.train()
    elapsed = dict.fromkeys(runners, 0.0)
    tokens = 0
    names = list(runners)
    for i, (src, prev, tgt) in enumerate(batches):
        for who in names[i % 3:] + names[: i % 3]:  # rotate who goes first
            t0 = time.perf_counter()
            runners[who](src, prev, tgt).backward()
            opts[who].step()
            opts[who].zero_grad(set_to_none=True)
            if i >= warmup:
                elapsed[who] += time.perf_counter() - t0
        if i >= warmup:
            tokens += int(src.ne(PAD_ID).sum() + tgt.ne(PAD_ID).sum())
    rates = {k: tokens / v for k, v in elapsed.items()}
    print(f"[train {name}] " + "  ".join(f"{k} {v:,.0f} tok/s" for k, v in rates.items())
          + f"  ratio {rates['ours'] / rates['marian']:.2f} (masked {rates['ours_masked'] / rates['marian']:.2f})")
    return rates


def force_lengths_processor(lengths: torch.Tensor, beam: int):
    """A transformers LogitsProcessor making row r of a beam-search batch end after exactly lengths[r // beam]
    tokens: eos forbidden before, everything but eos forbidden at that step (eos keeps its log-prob), the
    same rule as our beam_search(min_len=lengths, max_len=lengths)."""
    from transformers import LogitsProcessor

    class ForceLengths(LogitsProcessor):
        def __init__(self):
            self.lengths = lengths.repeat_interleave(beam)

        def __call__(self, input_ids, scores):
            generated = input_ids.shape[1] - 1  # minus the decoder start token
            scores[self.lengths > generated, EOS_ID] = -math.inf
            at = self.lengths == generated
            eos = scores[:, EOS_ID].clone()
            scores[at] = -math.inf
            scores[at, EOS_ID] = eos[at]
            return scores

    return ForceLengths()


def bench_beam(name, model, marian, sources, lengths, beam, batch):
    from transformers import GenerationConfig, LogitsProcessorList

    model.eval()
    marian.eval()
    elapsed = {"ours": 0.0, "marian": 0.0}
    for i in range(0, len(sources), batch):
        src, want = sources[i:i + batch], lengths[i:i + batch]
        src = src[:, : int(src.ne(PAD_ID).sum(1).max())]
        gen = GenerationConfig(num_beams=beam, length_penalty=0.6, max_new_tokens=int(want.max()) + 1,
                               do_sample=False, early_stopping=True, decoder_start_token_id=BOS_ID,
                               bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
                               forced_eos_token_id=None, num_return_sequences=1)
        for who in (["ours", "marian"] if (i // batch) % 2 == 0 else ["marian", "ours"]):
            t0 = time.perf_counter()
            if who == "ours":
                hyps = beam_search(model, src, beam=beam, lenpen=0.6, min_len=want, max_len=want)
                got = [len(h) for h in hyps]
            else:
                with torch.inference_mode():
                    out = marian.generate(input_ids=src, attention_mask=src.ne(PAD_ID), generation_config=gen,
                                          logits_processor=LogitsProcessorList([force_lengths_processor(want, beam)]))
                got = (out[:, 1:].ne(PAD_ID) & out[:, 1:].ne(EOS_ID)).sum(1).tolist()
            elapsed[who] += time.perf_counter() - t0
            if got != want.tolist():
                raise RuntimeError(f"{who} did not generate the forced lengths: {got} vs {want.tolist()}")
    n = len(sources)
    ours, theirs = n / elapsed["ours"], n / elapsed["marian"]
    print(f"[beam {name}] ours {ours:.2f} sent/s  marian.generate {theirs:.2f} sent/s  ratio {ours / theirs:.2f}")
    return ours, theirs


def check_same_function(model, marian, batch) -> float:
    src, prev, _ = batch
    model.eval()
    marian.eval()
    with torch.inference_mode():
        a = model(src, prev)
        b = marian(input_ids=src, attention_mask=src.ne(PAD_ID), decoder_input_ids=prev).logits
    keep = prev.ne(PAD_ID)
    diff = (a - b)[keep].abs().max().item()
    if diff > 1e-3:
        raise RuntimeError(f"our model and Marian disagree after copying weights (max |dlogit| {diff:.2e})")
    return diff


# ---- the loop's overhead ------------------------------------------------------------------------------
SMALL = dict(d_model=256, n_heads=4, ffn_dim=1024, encoder_layers=3, decoder_layers=3)  # transformer_small


def _samples(n_batches: int, max_tokens: int, vocab: int, seed: int = 1) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Batches of (src ids, tgt ids) with log-normal lengths around 28 (newstest-like), within max_tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        length = int(np.clip(np.exp(rng.normal(np.log(28), 0.5)), 3, 120))
        n = max(1, max_tokens // (length + 3))
        b = []
        for _ in range(n):
            s = int(np.clip(length + rng.integers(-2, 3), 2, length + 2))
            t = int(np.clip(length + rng.integers(-2, 3), 2, length + 2))
            b.append((rng.integers(4, vocab, s), rng.integers(4, vocab, t)))
        out.append(b)
    return out


def bench_loop_overhead(args) -> str:
    """The training loop's per-update overhead over a plain forward+backward+step (target <= 5%), as a
    markdown line: loop tokens/s, plain tokens/s and the overhead, on transformer_small (V = 8000).

    Both sides run on the same model, optimizer and batches, alternating which goes first; the plain side
    is `ours, masked` of `bench_training` (output_mask, F.cross_entropy with label smoothing, backward,
    Adam, zero_grad). The loop side is what train() does per update: collate the samples, move them to the
    device, `train_step` (token-count all-reduce, label-smoothed loss + NLL, backward, global grad norm,
    the finite check with its host sync, optimizer and schedule step), the model-FLOPs count and the
    device-side metric accumulation."""
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=8000, **SMALL)
    model = Transformer(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0)
    device = torch.device("cpu")
    warmup, steps = int(getattr(args, "warmup", 2)), int(getattr(args, "train_steps", 6))
    batches = _samples(warmup + steps, int(getattr(args, "max_tokens", 2048)), cfg.vocab_size)
    pre = [collate(b) for b in batches]  # the plain side gets its tensors for free

    def plain(i):
        b = pre[i]
        keep = b["target"].ne(0)
        logits = model(b["src_tokens"], b["prev_output_tokens"], output_mask=keep)
        loss = F.cross_entropy(logits.float(), b["target"][keep], label_smoothing=0.1, reduction="sum") / keep.sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    win = {"loss": torch.zeros(()), "nll": torch.zeros(()), "gnorm": torch.zeros(())}

    def loop(i):
        b = collate(batches[i])
        model.training_flops(tuple(b["src_tokens"].shape), tuple(b["target"].shape))
        r = train_step(model, opt, [to_device(b, device)], label_smoothing=0.1, scheduler=sched)
        win["loss"] += r.loss_sum / r.ntokens
        win["nll"] += r.nll_sum / r.ntokens
        win["gnorm"] += r.gnorm

    model.train()
    elapsed = {"plain": 0.0, "loop": 0.0}
    runners = [("plain", plain), ("loop", loop)]
    tokens = 0
    for i in range(len(batches)):
        for name, fn in (runners if i % 2 == 0 else runners[::-1]):
            t0 = time.perf_counter()
            fn(i)
            if i >= warmup:
                elapsed[name] += time.perf_counter() - t0
        if i >= warmup:
            tokens += int(pre[i]["ntokens"])
    rate = {k: tokens / v for k, v in elapsed.items()}
    overhead = elapsed["loop"] / elapsed["plain"] - 1.0
    return (f"- Loop overhead (transformer_small, {steps} timed updates, target tokens/s): loop "
            f"{rate['loop']:,.0f} vs plain masked step {rate['plain']:,.0f} -> **{overhead * 100:+.1f}%** "
            f"(target <= 5%; measured by adafactor_repro.bench.train.bench_loop_overhead, steps alternate).")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="small,base", help="comma list of: " + ", ".join(MODELS))
    ap.add_argument("--max-tokens", type=int, default=1024, help="padded tokens per side per training batch")
    ap.add_argument("--train-steps", type=int, default=6, help="timed training steps per model")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--beam-sentences", type=int, default=48, help="newstest2014 sources decoded")
    ap.add_argument("--beam-batch", type=int, default=16, help="sentences per generation batch")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared, loaded CPU, OpenMP threads waiting on "
                         "each other dominate and the figures stop being reproducible; 0 = torch's default)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_train.md"))
    args = ap.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        ap.error(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    train_rows, beam_rows, checks = [], [], []
    for name in names:
        torch.manual_seed(0)
        cfg = model_config(name)
        model = Transformer(cfg)
        marian = make_marian(cfg)
        copy_weights_to_marian(model, marian)
        pairs = sentence_lengths(3003)
        batches = token_batches(pairs, args.max_tokens, cfg.vocab_size, args.warmup + args.train_steps)
        checks.append(f"{name}: max |logit difference| ours vs Marian with the copied weights "
                      f"{check_same_function(model, marian, batches[0]):.1e}")
        timed = batches[args.warmup:]
        pad_frac = 1 - sum(int(t.ne(PAD_ID).sum()) for _, _, t in timed) / sum(t.numel() for _, _, t in timed)
        checks.append(f"{name}: {pad_frac:.1%} of the timed target positions are padding")
        r = bench_training(name, model, marian, batches, args.warmup)
        train_rows.append(f"| {name} | {model.num_parameters() / 1e6:.1f}M | {r['ours']:,.0f} | "
                          f"{r['ours_masked']:,.0f} | {r['marian']:,.0f} | **{r['ours'] / r['marian']:.2f}x** | "
                          f"**{r['ours_masked'] / r['marian']:.2f}x** |")
        # beam search on the first newstest2014 lines: random source ids of the English lengths, outputs
        # forced to the German lengths (a realistic spread within each batch)
        g = torch.Generator().manual_seed(2)
        lens = sentence_lengths(args.beam_sentences)
        sources = torch.full((len(lens), max(s for s, _ in lens)), PAD_ID)
        for r, (s, _) in enumerate(lens):
            sources[r, : s - 1] = torch.randint(4, cfg.vocab_size, (s - 1,), generator=g)
            sources[r, s - 1] = EOS_ID
        want = torch.tensor([t - 1 for _, t in lens])  # tokens before eos
        ours, theirs = bench_beam(name, model, marian, sources, want, args.beam, args.beam_batch)
        beam_rows.append(f"| {name} | {len(lens)} | {args.beam} | {want.float().mean():.1f} | {ours:.2f} | {theirs:.2f} | "
                         f"**{ours / theirs:.2f}x** |")

    cmd = "python scripts/bench_train.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = "\n".join([
        "# Training and beam-search speed vs Hugging Face MarianMTModel",
        "",
        f"Command: `{cmd.strip()}` (`make bench-train`)  ",
        f"Machine: {machine_header(torch.get_num_threads())}; transformers {transformers.__version__}, "
        f"Python {platform.python_version()}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Shared CPU: "
        "figures move with other load; the ratios are measured side by side (steps alternate).",
        "",
        "Same weights in both (ours copied into Marian, SDPA attention in both, post-norm in both since "
        "Marian has no pre-norm), random ids with newstest2014 lengths.",
        "",
        f"## Training (forward, label-smoothed CE, backward, Adam): tokens/s, {args.train_steps} timed steps "
        f"of <= {args.max_tokens} padded tokens per side",
        "",
        "`ours` computes logits [B,T,V] like Marian; `ours, masked` passes `output_mask=target != pad`, so the "
        "output layer and the loss skip padded positions (what the training loop can use).",
        "",
        "| model | params | ours tok/s | ours, masked tok/s | Marian tok/s | ours / Marian | masked / Marian |",
        "|---|---|---|---|---|---|---|",
        *train_rows,
        "",
        "Why training is close to parity on a CPU: the matrix multiplies (MKL) are the same in both and take "
        "most of the time, and attention dropout sends `scaled_dot_product_attention` to its unfused math path "
        "on CPU (fused kernels with dropout are GPU-only), so the fused attention cannot pay off here; "
        "`output_mask` saves the padding share (see Checks) of the output layer and the loss. Run-to-run noise "
        "on this shared CPU is about +-10%.",
        "",
        bench_loop_overhead(args),
        "",
        f"## Beam search: sentences/s, beam {args.beam}, GNMT length penalty 0.6, batches of "
        f"{args.beam_batch} newstest2014 sentences",
        "",
        "Random weights would stop at random points, so both searches are forced to the same output length per "
        "sentence, the newstest2014 reference's (German words x 1.3, mean in the `len` column): eos is "
        "forbidden before it and the only choice at it. Ours: `beam_search(min_len=len, max_len=len)`; "
        "Marian: `generate(num_beams, early_stopping=True)` with a LogitsProcessor applying the same rule. "
        "Both use a key/value cache; ours drops finished sentences from the batch, Marian keeps them.",
        "",
        "| model | sentences | beam | len | ours sent/s | Marian sent/s | ours / Marian |",
        "|---|---|---|---|---|---|---|",
        *beam_rows,
        "",
        "Checks: " + "; ".join(checks) + ".",
        "",
    ])
    atomic_write_text(Path(args.out), text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
