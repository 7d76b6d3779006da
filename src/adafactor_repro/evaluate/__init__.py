"""Beam search and BLEU (imports the model and the data Tokenizer type only)."""

from adafactor_repro.evaluate import bleu
from adafactor_repro.evaluate.beam import beam_search, length_penalty, translate

__all__ = ["beam_search", "bleu", "length_penalty", "translate"]
