"""Reading a prepared data directory: memory-mapped splits and the raw evaluation text."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .build import load_meta
from .sources import EVAL_SPLITS, DataError


class TranslationDataset:
    """One binarized split. Opening it maps the files; nothing is read until indexed (O(1) in corpus size
    apart from the two length arrays, ~40 ms for WMT14's 4.5M pairs)."""

    def __init__(self, data_dir: str | Path, split: str):
        self.data_dir = Path(data_dir)
        self.split = split
        meta = load_meta(self.data_dir)
        if split not in meta["splits"]:
            raise DataError(f"{self.data_dir} has no split {split!r}; it has {sorted(meta['splits'])}")
        dtype = np.dtype(meta["dtype"])
        self._ids, self._off = {}, {}
        for side in ("src", "tgt"):
            off = np.load(self.data_dir / f"{split}.{side}.off.npy", mmap_mode="r")
            self._off[side] = off
            # np.memmap refuses empty files; an empty test split is legal.
            self._ids[side] = (np.memmap(self.data_dir / f"{split}.{side}.bin", dtype=dtype, mode="r")
                               if off[-1] > 0 else np.zeros(0, dtype))
            if len(self._ids[side]) != off[-1]:
                raise DataError(f"{self.data_dir}/{split}.{side}.bin holds {len(self._ids[side])} ids but the "
                                f"offsets say {int(off[-1])}: the build is corrupt, delete {self.data_dir}")
        self.src_lengths = np.diff(self._off["src"]).astype(np.int64)
        self.tgt_lengths = np.diff(self._off["tgt"]).astype(np.int64)
        self.src_lang, self.tgt_lang = meta["src_lang"], meta["tgt_lang"]

    def __len__(self) -> int:
        return len(self.src_lengths)

    # DataLoader workers started by spawn/forkserver receive the dataset pickled: send the path and map the
    # files again there (pickling the maps would copy the whole split into every worker).
    def __getstate__(self) -> dict:
        return {"data_dir": self.data_dir, "split": self.split}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["data_dir"], state["split"])

    def max_id(self) -> int:
        """The largest token id in the split (-1 if empty): one vectorised pass over the mapped ids
        (~0.1 s for WMT14's ~270M ids)."""
        return max((int(a.max()) for a in self._ids.values() if len(a)), default=-1)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i < 0:
            i += len(self)
        s0, s1 = self._off["src"][i], self._off["src"][i + 1]
        t0, t1 = self._off["tgt"][i], self._off["tgt"][i + 1]
        # int64 copies: detached from the map (safe across DataLoader workers) and ready for torch.
        return (np.asarray(self._ids["src"][s0:s1], dtype=np.int64),
                np.asarray(self._ids["tgt"][t0:t1], dtype=np.int64))


def unigram_nll(train: TranslationDataset, valid: TranslationDataset, vocab_size: int, eos_id: int) -> float:
    """Nats per target token (eos included, as the training loss counts them) of `valid`'s targets under
    `train`'s target-token frequencies (add-one smoothed): the loss of a model that reads neither the source nor
    the prefix. A run whose validation NLL is not below it has learned no translation; the results' loss verdict
    measures progress from it (docs/cpu_scale.md). One bincount over the training targets."""
    counts = np.bincount(np.asarray(train._ids["tgt"]), minlength=vocab_size).astype(np.float64)[:vocab_size]
    counts[eos_id] += len(train)
    logp = np.log((counts + 1.0) / (counts.sum() + vocab_size))
    ids = np.asarray(valid._ids["tgt"])
    n = len(ids) + len(valid)
    return float(-(logp[ids].sum() + len(valid) * logp[eos_id]) / max(n, 1))


def check_artifact(data_dir: str | Path, tokenizer) -> str:
    """Refuse a data directory whose pieces do not belong together, before a model is built on them; returns the
    sha256 of the tokenizer file actually loaded (what a run records).

    - the tokenizer file must be the one the splits were encoded with (meta.json's sha256 of spm.model);
    - its vocabulary must be the one meta.json records;
    - every id of every split must fit that vocabulary (an id past it crashes the embedding lookup mid-run).
    """
    from .tokenizer import sha256_of

    data_dir = Path(data_dir)
    meta = load_meta(data_dir)
    spm_meta = meta.get("spm", {})
    path = Path(getattr(tokenizer, "path", data_dir / "spm.model"))
    sha = sha256_of(path)
    fix = f"delete {data_dir} and rebuild it (`make data`), or restore the files it was built with"
    if spm_meta.get("sha256") and sha != spm_meta["sha256"]:
        raise DataError(f"{path} (sha256 {sha[:12]}) is not the tokenizer {data_dir}'s splits were encoded with "
                        f"(meta.json: {spm_meta['sha256'][:12]}): {fix}")
    want = spm_meta.get("vocab_size_actual")
    if want is not None and tokenizer.vocab_size != int(want):
        raise DataError(f"{path} has {tokenizer.vocab_size} pieces, meta.json of {data_dir} says {want}: {fix}")
    for split in meta.get("splits", {}):
        top = TranslationDataset(data_dir, split).max_id()
        if top >= tokenizer.vocab_size:
            raise DataError(f"{data_dir}/{split}.*.bin holds token id {top}, past the vocabulary of {path} "
                            f"({tokenizer.vocab_size} pieces): {fix}")
    return sha


def _read_lines(path: Path) -> list[str]:
    # Split on "\n" only: str.splitlines() would also break at U+0085/U+2028 inside segments.
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def load_raw(data_dir: str | Path, split: str) -> tuple[list[str], list[str]]:
    """Every line of an evaluation split, uncleaned: (sources, references)."""
    if split not in EVAL_SPLITS:
        raise DataError(f"raw text is kept for the evaluation splits {list(EVAL_SPLITS)} only, not {split!r}")
    data_dir = Path(data_dir)
    meta = load_meta(data_dir)
    src = _read_lines(data_dir / f"{split}.raw.{meta['src_lang']}")
    ref = _read_lines(data_dir / f"{split}.raw.{meta['tgt_lang']}")
    expected = meta["splits"][split]["raw_lines"]
    if not len(src) == len(ref) == expected:
        raise DataError(f"{data_dir}: raw {split} has {len(src)} source / {len(ref)} reference lines, "
                        f"meta.json says {expected}; delete {data_dir} to rebuild")
    return src, ref
