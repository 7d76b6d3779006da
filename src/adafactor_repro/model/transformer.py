"""The Transformer of Vaswani et al. (2017), "Attention Is All You Need", in one file.

Encoder-decoder, sinusoidal positions, one shared source/target/output embedding, pre-norm (tensor2tensor's
``transformer_base_v2``, which Shazeer & Stern 2018 trained) or post-norm (Vaswani et al.'s layout). Attention
is ``F.scaled_dot_product_attention`` (fused kernels on CPU and GPU). The decoder has an incremental path
with a key/value cache for generation (``init_cache`` / ``decode_step``); ``evaluate.beam`` drives it.

Token ids are fixed: pad 0, unk 1, bos 2, eos 3. ``src_tokens`` [B,S] end with eos; ``prev_output_tokens``
[B,T] start with bos; both are right-padded with pad.

Initialization follows fairseq's ``transformer`` (documented in docs/model.md): token embeddings
N(0, d_model^-0.5) with the pad row zeroed; every Linear weight Xavier-uniform, with gain 1/sqrt(2) on the
q/k/v projections (fairseq's ``MultiheadAttention``, equal to Xavier over the stacked [3d, d] matrix); biases
zero; LayerNorm weight 1, bias 0. tensor2tensor's ``uniform_unit_scaling`` has the same variance as this
for the square attention matrices and within a factor of 2 elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The vocabulary's special ids (sentencepiece as data/ trains it). Stated here too because the model imports no
# data code; the Tokenizer refuses an spm model with other ids, and tests/test_data.py pins that the two agree.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


@dataclass
class TransformerConfig:
    """The keys of configs/model/*.yaml plus ``vocab_size`` and ``pad_id``. Defaults are transformer_base."""

    vocab_size: int
    d_model: int = 512              # Vaswani Table 3 "base"
    n_heads: int = 8
    ffn_dim: int = 2048
    encoder_layers: int = 6
    decoder_layers: int = 6
    dropout: float = 0.1            # residual dropout, on embeddings+positions and every sublayer output
    attention_dropout: float = 0.1  # on the attention probabilities (t2t v2: 0.1; fairseq default: 0.0)
    activation_dropout: float = 0.1  # after the FFN's ReLU (t2t v2 "relu_dropout": 0.1)
    pre_norm: bool = True           # LayerNorm before each sublayer + a final LayerNorm per stack
    share_all_embeddings: bool = True  # one matrix for source, target and output (shared vocabulary)
    scale_embedding: bool = True    # embeddings multiplied by sqrt(d_model) (Vaswani section 3.4)
    # The paper's Table 3 (Section 8.1) varies these two: token-embedding init sigma x multiplier of
    # (d^-0.5, sqrt(d)) [the default], (1, 1) and (d^-0.5, 1), on a model whose softmax has its own matrix.
    embed_init_std: float | None = None  # sigma of the token embeddings' N(0, sigma) init; None = d_model^-0.5
    share_decoder_input_output_embed: bool = True  # False: the softmax gets its own [V, d] matrix, N(0, d^-0.5)
    max_positions: int = 1024       # size of the sinusoid table: longest source or target sequence
    pad_id: int = PAD_ID

    def __post_init__(self) -> None:
        if self.vocab_size <= EOS_ID:
            raise ValueError(f"TransformerConfig.vocab_size={self.vocab_size}: must exceed the 4 special ids")
        if self.d_model % self.n_heads:
            raise ValueError(f"TransformerConfig: d_model={self.d_model} is not divisible by "
                             f"n_heads={self.n_heads}; pick n_heads dividing d_model")
        if self.d_model % 2:
            raise ValueError(f"TransformerConfig.d_model={self.d_model} must be even (sin/cos halves)")
        if self.embed_init_std is not None and not self.embed_init_std > 0:
            raise ValueError(f"TransformerConfig.embed_init_std={self.embed_init_std} must be > 0 (or None for "
                             "d_model^-0.5)")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"TransformerConfig.{name}={p} must be in [0, 1)")


class EncoderOut(NamedTuple):
    out: Tensor           # [B, S, d] encoder states (after the final LayerNorm when pre-norm)
    padding_mask: Tensor  # [B, S] bool, True at pad positions


def sinusoids(num_positions: int, dim: int) -> Tensor:
    """Vaswani section 3.5 sinusoids, laid out as tensor2tensor's ``get_timing_signal_1d`` (and fairseq):
    [sin | cos] halves, timescales geometric from 1 to 10^4 with ``log(1e4) / (dim/2 - 1)`` spacing."""
    half = dim // 2
    inv_timescales = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(1e4) / max(half - 1, 1)))
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


def _xavier(weight: Tensor, gain: float = 1.0) -> None:
    nn.init.xavier_uniform_(weight, gain=gain)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection (one GEMM instead of three)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.attention_dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        for w in self.qkv.weight.chunk(3):  # each [d, d] block as fairseq's separate q, k, v
            _xavier(w, gain=1 / math.sqrt(2))
        _xavier(self.out.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, causal: bool = False,
                append_kv=None) -> Tensor:
        """``append_kv(k, v) -> (keys, values)``: incremental decoding, where the cache stores this step's
        keys/values and hands back every position's so far."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        if append_kv is not None:
            k, v = append_kv(k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class CrossAttention(nn.Module):
    """Decoder-encoder attention; keys/values of the encoder states are computed once per sentence."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.attention_dropout
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        _xavier(self.q.weight, gain=1 / math.sqrt(2))
        for w in self.kv.weight.chunk(2):
            _xavier(w, gain=1 / math.sqrt(2))
        _xavier(self.out.weight)
        for b in (self.q.bias, self.kv.bias, self.out.bias):
            nn.init.zeros_(b)

    def project_kv(self, enc: Tensor) -> tuple[Tensor, Tensor]:
        B, S, D = enc.shape
        k, v = self.kv(enc).view(B, S, 2, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], attn_mask: Tensor | None) -> Tensor:
        B, T, D = x.shape
        q = self.q(x).view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class FeedForward(nn.Module):
    """Position-wise FFN, Vaswani eq. (2): max(0, x W1 + b1) W2 + b2."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(cfg.d_model, cfg.ffn_dim), nn.Linear(cfg.ffn_dim, cfg.d_model)
        self.activation_dropout = cfg.activation_dropout
        for fc in (self.fc1, self.fc2):
            _xavier(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.dropout(F.relu(self.fc1(x)), self.activation_dropout, self.training))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.pre_norm, self.dropout = cfg.pre_norm, cfg.dropout
        self.attn, self.ffn = SelfAttention(cfg), FeedForward(cfg)
        self.ln_attn, self.ln_ffn = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        x = _sublayer(x, self.ln_attn, lambda h: self.attn(h, attn_mask), self.pre_norm, self.dropout, self.training)
        return _sublayer(x, self.ln_ffn, self.ffn, self.pre_norm, self.dropout, self.training)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.pre_norm, self.dropout = cfg.pre_norm, cfg.dropout
        self.self_attn, self.cross_attn, self.ffn = SelfAttention(cfg), CrossAttention(cfg), FeedForward(cfg)
        self.ln_self, self.ln_cross, self.ln_ffn = (nn.LayerNorm(cfg.d_model) for _ in range(3))

    def forward(self, x: Tensor, cross_kv: tuple[Tensor, Tensor], src_mask: Tensor, append_kv=None) -> Tensor:
        # Training: one causal pass (right padding, so no key mask is needed for non-pad queries).
        # Incremental (`append_kv` given): the single query may see every cached position, so no mask at all.
        x = _sublayer(x, self.ln_self, lambda h: self.self_attn(h, causal=append_kv is None, append_kv=append_kv),
                      self.pre_norm, self.dropout, self.training)
        x = _sublayer(x, self.ln_cross, lambda h: self.cross_attn(h, cross_kv, src_mask),
                      self.pre_norm, self.dropout, self.training)
        return _sublayer(x, self.ln_ffn, self.ffn, self.pre_norm, self.dropout, self.training)


def _sublayer(x: Tensor, ln: nn.LayerNorm, f, pre_norm: bool, p: float, training: bool) -> Tensor:
    """Residual sublayer: pre-norm x + drop(f(LN(x))) (t2t v2, fairseq normalize_before) or
    post-norm LN(x + drop(f(x))) (Vaswani section 5.4)."""
    if pre_norm:
        return x + F.dropout(f(ln(x)), p, training)
    return ln(x + F.dropout(f(x), p, training))


@dataclass
class DecoderCache:
    """Key/value cache of incremental decoding; rows are hypotheses (batch x beam).

    The self-attention keys/values live in buffers preallocated for ``capacity`` positions, written in place
    one position per step: no ``cat`` that copies the whole history at every step (and no new allocation
    per step). A step past ``capacity`` doubles the buffers."""

    self_kv: list[tuple[Tensor, Tensor] | None]  # per decoder layer, [N, H, capacity, d/H] each, filled to `step`
    cross_kv: list[tuple[Tensor, Tensor]]         # per decoder layer, [N, H, S, d/H], fixed
    src_mask: Tensor | None                       # [N, 1, 1, S] bool, True = may attend; None: no padding
    step: int = 0                                 # target positions already decoded (= next position)
    capacity: int = 64                            # positions the buffers hold before they grow

    def appender(self, layer: int):
        """``append(k, v)`` for one decoder layer: stores the step's [N, H, 1, d/H] keys/values at position
        ``step`` and returns views of positions ``0..step``."""
        def append(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
            t, buf = self.step, self.self_kv[layer]
            if buf is None or t >= buf[0].size(2):
                size = max(self.capacity, 2 * t, 1)
                grown = tuple(x.new_empty(x.size(0), x.size(1), size, x.size(3)) for x in (k, v))
                if buf is not None:
                    for new, old in zip(grown, buf):
                        new[:, :, :t].copy_(old[:, :, :t])
                buf = self.self_kv[layer] = grown
            buf[0][:, :, t:t + 1].copy_(k)
            buf[1][:, :, t:t + 1].copy_(v)
            return buf[0][:, :, :t + 1], buf[1][:, :, :t + 1]
        return append

    def index_select(self, index: Tensor, self_only: bool = False) -> None:
        """Keep / reorder / repeat rows. ``self_only`` skips the encoder side, valid when every new row
        comes from a row of the same sentence (beam reordering), whose encoder keys/values are identical."""
        # whole buffers, one gather each (positions past `step` are scratch, never read)
        self.self_kv = [None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))
                        for kv in self.self_kv]
        if not self_only:
            self.cross_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.cross_kv]
            if self.src_mask is not None:
                self.src_mask = self.src_mask.index_select(0, index)


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed_tokens = nn.Embedding(cfg.vocab_size, d, padding_idx=cfg.pad_id)  # target (+source, output)
        self.embed_src = None if cfg.share_all_embeddings else nn.Embedding(cfg.vocab_size, d, padding_idx=cfg.pad_id)
        std = d ** -0.5 if cfg.embed_init_std is None else float(cfg.embed_init_std)
        for emb in (self.embed_tokens, self.embed_src):
            if emb is not None:  # fairseq/t2t: N(0, d^-1/2), so that sqrt(d)-scaled embeddings have unit variance
                nn.init.normal_(emb.weight, mean=0.0, std=std)
                with torch.no_grad():
                    emb.weight[cfg.pad_id].zero_()
        self.register_buffer("positions", sinusoids(cfg.max_positions, d), persistent=False)
        self.embed_scale = math.sqrt(d) if cfg.scale_embedding else 1.0
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        # Pre-norm stacks end with a LayerNorm (t2t v2 layer_postprocess, fairseq normalize_before).
        self.encoder_ln = nn.LayerNorm(d) if cfg.pre_norm else nn.Identity()
        self.decoder_ln = nn.LayerNorm(d) if cfg.pre_norm else nn.Identity()
        # Built last, so that the default (tied) model draws the same random numbers as before this option.
        # t2t's SymbolModality initialises an untied softmax matrix as the embeddings' default, N(0, d^-0.5).
        self.softmax = None
        if not cfg.share_decoder_input_output_embed:
            self.softmax = nn.Linear(d, cfg.vocab_size, bias=False)
            nn.init.normal_(self.softmax.weight, mean=0.0, std=d ** -0.5)

    # ---- pieces -------------------------------------------------------------------------------------
    def _embed(self, tokens: Tensor, emb: nn.Embedding, start: int = 0) -> Tensor:
        T = tokens.size(1)
        if start + T > self.cfg.max_positions:
            raise ValueError(f"sequence of {start + T} tokens exceeds model.max_positions="
                             f"{self.cfg.max_positions}; truncate the input or raise max_positions")
        x = emb(tokens) * self.embed_scale + self.positions[start:start + T]
        return F.dropout(x, self.cfg.dropout, self.training)

    def output_projection(self, h: Tensor) -> Tensor:
        """Decoder states [..., d] -> logits [..., V] through the (tied) target embedding, Vaswani 3.4, or the
        model's own softmax matrix (share_decoder_input_output_embed=False)."""
        return F.linear(h, self.embed_tokens.weight if self.softmax is None else self.softmax.weight)

    def encode(self, src_tokens: Tensor) -> EncoderOut:
        _check_tokens("src_tokens", src_tokens)
        padding_mask = src_tokens.eq(self.cfg.pad_id)
        attn_mask = ~padding_mask[:, None, None, :]  # [B,1,1,S], True = may attend
        x = self._embed(src_tokens, self.embed_tokens if self.embed_src is None else self.embed_src)
        for layer in self.encoder:
            x = layer(x, attn_mask)
        return EncoderOut(self.encoder_ln(x), padding_mask)

    def decode(self, prev_output_tokens: Tensor, encoder_out: EncoderOut) -> Tensor:
        """Full (teacher-forced, causal) decoder pass -> final decoder states [B, T, d] (before the output
        projection, so a loss may project only the non-pad positions)."""
        _check_tokens("prev_output_tokens", prev_output_tokens)
        src_mask = ~encoder_out.padding_mask[:, None, None, :]
        x = self._embed(prev_output_tokens, self.embed_tokens)
        for layer in self.decoder:
            x = layer(x, layer.cross_attn.project_kv(encoder_out.out), src_mask)
        return self.decoder_ln(x)

    def forward(self, src_tokens: Tensor, prev_output_tokens: Tensor, output_mask: Tensor | None = None,
                output_index: Tensor | None = None) -> Tensor:
        """Teacher-forced training pass: logits [B, T, V] for every target position, or logits [n, V] of
        the selected positions only, so that the output layer and the loss skip padding. Select them with
        ``output_index`` [n] (flat row-major positions in [B*T], as ``collate``'s ``target_index``: a gather
        whose size the host already knows) or a bool ``output_mask`` [B, T] (``h[mask]``: the device must
        report how many rows it selected, a host sync). Both give the rows in row-major order."""
        h = self.decode(prev_output_tokens, self.encode(src_tokens))
        if output_index is not None:
            return self.output_projection(h.reshape(-1, h.size(-1)).index_select(0, output_index))
        return self.output_projection(h if output_mask is None else h[output_mask])

    # ---- incremental decoding -----------------------------------------------------------------------
    def init_cache(self, encoder_out: EncoderOut, max_len: int | None = None) -> DecoderCache:
        """Project the encoder states to each decoder layer's keys/values once; the self-attention cache
        starts empty, sized for ``max_len`` decoder positions (bos included) when the caller knows it.
        Expand it to beams with ``cache.index_select(arange(B).repeat_interleave(beam))``."""
        pad = encoder_out.padding_mask
        return DecoderCache(self_kv=[None] * len(self.decoder),
                            cross_kv=[layer.cross_attn.project_kv(encoder_out.out) for layer in self.decoder],
                            # without padding, no mask: SDPA's fast path (one host sync per batch, not per step)
                            src_mask=~pad[:, None, None, :] if bool(pad.any()) else None,
                            capacity=int(max_len) if max_len else 64)

    def decode_step(self, tokens: Tensor, cache: DecoderCache) -> Tensor:
        """One decoder position for every row: ``tokens`` [N] (or [N, 1]) are the previous outputs at
        position ``cache.step`` (bos at step 0). Appends to ``cache`` and returns logits [N, V]."""
        x = self._embed(tokens.view(-1, 1), self.embed_tokens, start=cache.step)
        for i, layer in enumerate(self.decoder):
            x = layer(x, cache.cross_kv[i], cache.src_mask, append_kv=cache.appender(i))
        cache.step += 1
        return self.output_projection(self.decoder_ln(x[:, 0]))

    # ---- accounting ---------------------------------------------------------------------------------
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Trainable parameters, each tied matrix counted once (positions are a buffer, not counted)."""
        skip = {id(self.embed_tokens.weight)} | ({id(self.embed_src.weight)} if self.embed_src else set())
        return sum(p.numel() for p in self.parameters() if not (exclude_embeddings and id(p) in skip))

    def training_flops(self, src_shape: tuple[int, int], tgt_shape: tuple[int, int]) -> float:
        return training_flops(self.cfg, src_shape, tgt_shape)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.cfg).items())


def _check_tokens(name: str, t: Tensor) -> None:
    if t.dim() != 2 or t.dtype not in (torch.long, torch.int32):
        raise ValueError(f"{name} must be an integer tensor [batch, length]; got {tuple(t.shape)} {t.dtype}")


def training_flops(cfg: TransformerConfig, src_shape: tuple[int, int], tgt_shape: tuple[int, int]) -> float:
    """Model FLOPs of one forward+backward pass on padded batches ``src_shape`` = (B, S) and
    ``tgt_shape`` = (B, T), for MFU. Counted as 6 FLOPs per multiply-accumulate-weight per token (2 forward,
    4 backward; Kaplan et al. 2020, PaLM appendix B), plus attention's two score/value matmuls at 12*d per
    query per key (forward+backward), with no discount for causal masking (as PaLM, nanoGPT, torchtitan):

        encoder  6 * n_src * L_e * (4d^2 + 2 d f)            + 12 * n_src * L_e * d * S
        decoder  6 * n_tgt * L_d * (6d^2 + 2 d f)            + 12 * n_tgt * L_d * d * (T + S)
                 + 6 * n_src * L_d * 2d^2   (cross-attention keys/values, computed on source positions)
        output   6 * n_tgt * V * d

    with n_src = B*S, n_tgt = B*T, f = ffn_dim. Biases, LayerNorm, softmax and embedding lookups are left out.
    """
    (B, S), (Bt, T) = src_shape, tgt_shape
    if B != Bt:
        raise ValueError(f"training_flops: batch sizes differ: src {src_shape} vs tgt {tgt_shape}")
    d, f, Le, Ld, V = cfg.d_model, cfg.ffn_dim, cfg.encoder_layers, cfg.decoder_layers, cfg.vocab_size
    n_src, n_tgt = B * S, B * T
    enc = 6 * n_src * Le * (4 * d * d + 2 * d * f) + 12 * n_src * Le * d * S
    dec = 6 * n_tgt * Ld * (6 * d * d + 2 * d * f) + 12 * n_tgt * Ld * d * (T + S) + 6 * n_src * Ld * 2 * d * d
    return float(enc + dec + 6 * n_tgt * V * d)


def flops_per_token(cfg: TransformerConfig, src_len: int, tgt_len: int) -> float:
    """Training FLOPs per (source + target) token for sequences of these lengths; MFU = tokens/s *
    flops_per_token / peak FLOP/s."""
    return training_flops(cfg, (1, src_len), (1, tgt_len)) / (src_len + tgt_len)
