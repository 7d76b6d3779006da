"""The joint sentencepiece vocabulary of both languages, with fixed special ids.

The paper's Transformer runs use a shared source/target subword vocabulary of ~32k (Vaswani et al. 2017,
Sec. 5.1; tensor2tensor's `translate_ende_wmt32k`). Ids are fixed so that every module can rely on them:
pad 0, unk 1, bos 2, eos 3.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPM_MODEL = "spm.model"
# sentencepiece's trainer splits its EM sums over this many threads, and the pieces depend on the split (measured
# on Multi30k: 1 and 2 threads give 8k vocabularies with 1,996 pieces in different places). A fixed count, not the
# machine's cores, so that the same corpus and config give the same vocabulary on any machine.
SPM_THREADS = 8
_CONTROL = frozenset((PAD_ID, BOS_ID, EOS_ID))


class Tokenizer:
    """`encode(str) -> list[int]` without specials; `decode(list[int]) -> str` (specials are dropped)."""

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, spm_model_path: str | Path):
        self.path = Path(spm_model_path)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        got = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if got != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError(f"{self.path}: special ids (pad, unk, bos, eos) are {got}, expected (0, 1, 2, 3); "
                             "rebuild it with adafactor_repro.data.prepare")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids) -> str:
        # Generation output may carry bos/eos/pad: drop them (unk stays, rendered by sentencepiece as " ⁇ ").
        return self.sp.decode([i for i in map(int, ids) if i not in _CONTROL])

    def normalize(self, text: str) -> str:
        """What `decode(encode(text))` returns for text without unknown characters (NFKC, spaces folded)."""
        # spm's normalizer returns the piece view: spaces as U+2581 with the dummy prefix in front.
        norm = self.sp.normalize(text).replace("\u2581", " ")
        return norm[1:] if norm.startswith(" ") else norm

    def __len__(self) -> int:
        return self.vocab_size


def load_tokenizer(data_dir: str | Path) -> Tokenizer:
    return Tokenizer(Path(data_dir) / SPM_MODEL)


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def train_spm(text_file: Path, model_prefix: Path, *, model_type: str, vocab_size: int,
              input_sentence_size: int, character_coverage: float = 1.0, hard_vocab_limit: bool = True,
              seed: int = 1, num_threads: int = SPM_THREADS) -> Path:
    """Train the joint model on a file of sentences of both sides (sampled to `input_sentence_size`).

    The file written is a function of the text and the options only: sentencepiece stores the paths it was
    given (`trainer_spec.input`, `model_prefix`) inside the model, and they are cleared (`normalize_spm_model`),
    so two builds in different directories, or on different machines, are byte-identical."""
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"data.spm.model_type={model_type!r}: expected 'unigram' or 'bpe'")
    # The sample that spm draws (shuffle_input_sentence) depends on its global RNG: seed it for a
    # reproducible vocabulary.
    spm.set_random_generator_seed(int(seed))
    spm.SentencePieceTrainer.train(
        input=str(text_file), model_prefix=str(model_prefix), model_type=model_type,
        vocab_size=int(vocab_size), character_coverage=float(character_coverage),
        input_sentence_size=int(input_sentence_size), shuffle_input_sentence=True,
        hard_vocab_limit=bool(hard_vocab_limit),
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        num_threads=max(1, int(num_threads)), minloglevel=2,
    )
    path = Path(str(model_prefix) + ".model")
    normalize_spm_model(path)
    return path


def normalize_spm_model(path: Path) -> None:
    """Drop the build's file paths from a trained model (in place). Encoding reads neither field."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(path.read_bytes())
    del proto.trainer_spec.input[:]
    proto.trainer_spec.model_prefix = ""
    path.write_bytes(proto.SerializeToString(deterministic=True))
