"""Data pipeline: hub or local parallel text -> cleaning -> joint sentencepiece -> memory-mapped splits ->
token-budget batches (`data.loader.EpochBatches` feeds them to training; imported on its own: it needs torch,
the build does not). See docs/data.md for the artifact layout and docs/architecture.md for the contract."""

from .batching import TokenBatchSampler, collate, padding_efficiency, update_budget
from .build import data_config, load_meta, prepare
from .dataset import TranslationDataset, check_artifact, load_raw, unigram_nll
from .sources import DataError
from .tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, load_tokenizer

__all__ = [
    "prepare", "load_meta", "data_config", "DataError",
    "Tokenizer", "load_tokenizer", "PAD_ID", "UNK_ID", "BOS_ID", "EOS_ID",
    "TranslationDataset", "load_raw", "check_artifact", "unigram_nll",
    "TokenBatchSampler", "collate", "padding_efficiency", "update_budget",
]
