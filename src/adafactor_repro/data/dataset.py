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

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i < 0:
            i += len(self)
        s0, s1 = self._off["src"][i], self._off["src"][i + 1]
        t0, t1 = self._off["tgt"][i], self._off["tgt"][i + 1]
        # int64 copies: detached from the map (safe across DataLoader workers) and ready for torch.
        return (np.asarray(self._ids["src"][s0:s1], dtype=np.int64),
                np.asarray(self._ids["tgt"][t0:t1], dtype=np.int64))


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
