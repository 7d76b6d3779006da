"""Parallel, streaming encode + clean of one split into memory-mapped token arrays.

The main process reads pairs and hands chunks of text to a pool of workers (each with its own
sentencepiece model); a bounded window of in-flight chunks keeps memory flat whatever the corpus size
(``Pool.imap`` would read the whole input ahead). Results come back in order as compact numpy arrays and are
appended to ``<split>.src.bin`` / ``<split>.tgt.bin``; only the per-pair lengths are kept until the end,
when they become the int64 offsets ``<split>.src.off.npy`` / ``<split>.tgt.off.npy``.

Cleaning follows the Moses ``clean-corpus-n.perl`` recipe that fairseq's prepare-wmt14en2de.sh applies to the
subword-tokenized text: drop a pair with an empty side, with a side longer than ``max_len`` tokens, or whose
length ratio (either direction) exceeds ``max_ratio``.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import sentencepiece as spm

from .sources import decode_block

REASONS = ("empty", "too_long", "ratio")
_SP: spm.SentencePieceProcessor | None = None


def init_worker(model_path: str) -> None:
    global _SP
    _SP = spm.SentencePieceProcessor(model_file=model_path)


def _flatten(ids: list[list[int]], dtype) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
    return flat, lengths


def encode_chunk(task: tuple) -> dict:
    """Encode both sides of a chunk, apply the cleaning rules, return kept ids/lengths and drop counts."""
    srcs, tgts, max_len, max_ratio, dtype = task
    if isinstance(srcs, tuple):  # raw text blocks: (bytes, path, first line number), decoded here
        srcs, tgts = decode_block(*srcs), decode_block(*tgts)
        if len(srcs) != len(tgts):  # pragma: no cover - read_text_blocks aligns blocks by line count
            raise ValueError("misaligned text block")
    # num_threads=1: parallelism comes from the worker processes (spm defaults to all cores per call).
    # Lists of ints + one np.fromiter beat return_type="numpy" (one small array per sentence costs more
    # than the flattening on short segments such as Multi30k's).
    s_ids, t_ids = _SP.encode(srcs, num_threads=1), _SP.encode(tgts, num_threads=1)
    ls = np.fromiter(map(len, s_ids), dtype=np.int64, count=len(s_ids))
    lt = np.fromiter(map(len, t_ids), dtype=np.int64, count=len(t_ids))
    empty = (ls == 0) | (lt == 0)  # whitespace-only lines encode to nothing
    too_long = ~empty & ((ls > max_len) | (lt > max_len)) if max_len else np.zeros_like(empty)
    ratio = (~empty & ~too_long & ((ls > max_ratio * lt) | (lt > max_ratio * ls))
             if max_ratio else np.zeros_like(empty))
    keep = ~(empty | too_long | ratio)
    if keep.all():
        ks, kt = s_ids, t_ids
    else:
        idx = np.flatnonzero(keep).tolist()
        ks, kt = [s_ids[i] for i in idx], [t_ids[i] for i in idx]
    src_flat, src_len = _flatten(ks, dtype)
    tgt_flat, tgt_len = _flatten(kt, dtype)
    return {"src": src_flat, "src_len": src_len, "tgt": tgt_flat, "tgt_len": tgt_len,
            "read": len(srcs), "dropped": {"empty": int(empty.sum()), "too_long": int(too_long.sum()),
                                           "ratio": int(ratio.sum())}}


def ordered_imap(pool, fn, tasks: Iterable, window: int) -> Iterator:
    """Like Pool.imap, but at most `window` tasks are read ahead (bounded memory); `pool=None` runs inline."""
    if pool is None:
        yield from map(fn, tasks)
        return
    pending: deque = deque()
    for task in tasks:
        pending.append(pool.apply_async(fn, (task,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _chunks(pairs: Iterable[tuple[str, str]], size: int, raw_out) -> Iterator[tuple[list[str], list[str]]]:
    it = iter(pairs)
    while True:
        chunk = list(itertools.islice(it, size))
        if not chunk:
            return
        srcs, tgts = [p[0] for p in chunk], [p[1] for p in chunk]
        if raw_out is not None:
            raw_out[0].write("".join(s + "\n" for s in srcs))
            raw_out[1].write("".join(t + "\n" for t in tgts))
        yield srcs, tgts


def encode_split(pairs: Iterable[tuple[str, str]] | None, out_dir: Path, split: str, *, pool, dtype,
                 max_len: int | None, max_ratio: float | None, window: int = 4, chunk_size: int = 2000,
                 raw_paths: tuple[Path, Path] | None = None,
                 blocks: Iterable[tuple[bytes, bytes, str, str, int]] | None = None) -> dict:
    """Encode, clean and write one split; returns its counts for meta.json.

    Input is either `pairs` (decoded string pairs, chunked here) or `blocks` (raw aligned text blocks from
    `sources.iter_text_blocks`, decoded in the workers: the main process then only moves bytes, which keeps
    it off the critical path with many workers). `raw_paths`: also write every line (uncleaned, one segment
    per line) for BLEU on the full set; only with `pairs`.
    """
    out_dir = Path(out_dir)
    dtype = np.dtype(dtype)
    lengths: dict[str, list[np.ndarray]] = {"src": [], "tgt": []}
    dropped = dict.fromkeys(REASONS, 0)
    read = 0
    raw_out = None
    try:
        if raw_paths is not None:
            raw_out = [open(p, "w", encoding="utf-8", newline="\n") for p in raw_paths]
        with open(out_dir / f"{split}.src.bin", "wb") as fs, open(out_dir / f"{split}.tgt.bin", "wb") as ft:
            if blocks is not None:
                if raw_out is not None:
                    raise ValueError("raw_paths needs decoded pairs, not raw blocks")
                tasks = (((bs, ps, first), (bt, pt, first), max_len, max_ratio, dtype)
                         for bs, bt, ps, pt, first in blocks)
            else:
                tasks = ((s, t, max_len, max_ratio, dtype) for s, t in _chunks(pairs, chunk_size, raw_out))
            for res in ordered_imap(pool, encode_chunk, tasks, window):
                fs.write(res["src"].tobytes())
                ft.write(res["tgt"].tobytes())
                lengths["src"].append(res["src_len"])
                lengths["tgt"].append(res["tgt_len"])
                read += res["read"]
                for k in REASONS:
                    dropped[k] += res["dropped"][k]
    finally:
        for f in raw_out or ():
            f.close()
    stats = {"read": read, "kept": 0, "dropped": dropped}
    for side in ("src", "tgt"):
        lens = np.concatenate(lengths[side]) if lengths[side] else np.zeros(0, np.int64)
        offsets = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        np.save(out_dir / f"{split}.{side}.off.npy", offsets)
        stats["kept"] = len(lens)
        stats[f"{side}_tokens"] = int(offsets[-1])
    return stats
