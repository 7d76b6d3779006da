"""The Transformer (Vaswani et al. 2017) in one file: see transformer.py and docs/model.md."""

from adafactor_repro.model.transformer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    DecoderCache,
    EncoderOut,
    Transformer,
    TransformerConfig,
    flops_per_token,
    training_flops,
)

__all__ = [
    "BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID", "DecoderCache", "EncoderOut", "Transformer", "TransformerConfig",
    "flops_per_token", "training_flops",
]
