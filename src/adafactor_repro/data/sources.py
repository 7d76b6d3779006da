"""Where parallel text comes from: a local directory (plain text, .gz or parquet) or the Hugging Face hub.

Every reader is a generator of ``(source, target)`` string pairs so that nothing downstream holds a whole
corpus in memory. Plain-text files are split on ``b"\\n"`` only: WMT's newstest2009.de has U+0085 (NEL)
inside lines, and ``str.splitlines()`` (which also splits on NEL, U+2028, \\x1c...) would shift every later
line and silently misalign the two sides.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..config import config_root

# The config keys of the splits; `valid`/`test` are evaluation splits (BLEU on every line).
SPLITS = ("train", "valid", "test")
EVAL_SPLITS = ("valid", "test")
# How the hub names them (wmt/wmt14 and bentrevett/multi30k both use these).
DEFAULT_HUB_SPLITS = {"train": "train", "valid": "validation", "test": "test"}

LOCAL_DIR_HINT = (
    "point at local files instead: `make data DATA=multi30k DATA_DIR=../shared/data/multi30k` or the Hydra "
    "override `data.local_dir=/abs/path` (a folder of aligned <stem>.<lang>[.gz] or <stem>.parquet files; "
    "see docs/data.md)"
)


class DataError(ValueError):
    """Bad input or configuration of the data pipeline; the message names the input and the fix."""


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _stems(value) -> list[str]:
    """A split maps to one file stem or a list of stems that are concatenated in order."""
    if isinstance(value, str):
        return [value]
    stems = [str(s) for s in value]
    if not stems:
        raise DataError("data.splits has an empty list of file stems; give at least one stem")
    return stems


@dataclass
class SplitSource:
    """The files (or hub split) one split is read from, with a content fingerprint for the cache key."""

    split: str
    kind: str  # "text" | "parquet" | "hub"
    parts: list[tuple] = field(default_factory=list)  # text: (src, tgt); parquet: (path,); hub: (hub_split,)
    fingerprint: list = field(default_factory=list)

    def describe(self) -> list[str]:
        return [" + ".join(str(p) for p in part) for part in self.parts]

    @property
    def where(self) -> str:
        """The folder of a local split's files (the hub path's split name for a hub split)."""
        return str(Path(self.parts[0][0]).parent) if self.kind != "hub" else str(self.parts[0][0])


def _find_local(local_dir: Path, stem: str, src_lang: str, tgt_lang: str, split: str) -> tuple[str, tuple]:
    def first(*cands: Path) -> Path | None:
        return next((c for c in cands if c.is_file()), None)

    src = first(local_dir / f"{stem}.{src_lang}", local_dir / f"{stem}.{src_lang}.gz")
    tgt = first(local_dir / f"{stem}.{tgt_lang}", local_dir / f"{stem}.{tgt_lang}.gz")
    if src and tgt:
        return "text", (src, tgt)
    pq = local_dir / f"{stem}.parquet"
    if pq.is_file():
        return "parquet", (pq,)
    missing = [str(p) for p, found in ((local_dir / f"{stem}.{src_lang}", src), (local_dir / f"{stem}.{tgt_lang}", tgt)) if not found]
    raise DataError(
        f"split '{split}': missing file {' and '.join(missing)} (also tried .gz and {pq.name}); "
        f"check data.local_dir={local_dir} and data.splits.{split}={stem!r}"
    )


def resolve_sources(cfg) -> dict[str, SplitSource]:
    """Locate every split's input; raises DataError naming the expected path when one is missing."""
    src_lang, tgt_lang = cfg["src_lang"], cfg["tgt_lang"]
    out: dict[str, SplitSource] = {}
    local_dir = None
    if cfg.get("local_dir"):
        local_dir = Path(os.path.expanduser(str(cfg["local_dir"]))).resolve()
        if not local_dir.is_dir():
            raise DataError(f"data.local_dir={local_dir} is not a directory; {LOCAL_DIR_HINT}")
    elif cfg.get("embedded"):  # the copy shipped in the repository (corpora/): builds offline
        local_dir = config_root().parent / str(cfg["embedded"])
        if not local_dir.is_dir():
            raise DataError(f"data.embedded={cfg['embedded']}: no folder {local_dir} in this checkout; restore it "
                            "(git checkout -- corpora) or read the hub with data.embedded=null")
    if local_dir is not None:
        for split in SPLITS:
            kinds, parts, fp = set(), [], []
            for stem in _stems(cfg["splits"][split]):
                kind, part = _find_local(local_dir, stem, src_lang, tgt_lang, split)
                kinds.add(kind)
                parts.append(part)
                # Content hashes, not paths or mtimes: a copied folder reuses the build, an edited file
                # rebuilds it. (~1 s per GB; negligible next to encoding.)
                fp.append([[p.name, _sha256_file(p)] for p in part])
            if len(kinds) > 1:
                raise DataError(f"split '{split}' mixes text and parquet files; use one format per split")
            out[split] = SplitSource(split, kinds.pop(), parts, fp)
        return out
    if not cfg.get("hub_path"):
        raise DataError(f"data '{cfg['name']}' has neither data.hub_path nor data.local_dir; {LOCAL_DIR_HINT}")
    hub_splits = dict(DEFAULT_HUB_SPLITS, **dict(cfg.get("hub_splits") or {}))
    for split in SPLITS:
        hub_split = hub_splits[split]
        out[split] = SplitSource(split, "hub", [(hub_split,)],
                                 [cfg["hub_path"], cfg.get("hub_config"), cfg.get("hub_revision"), hub_split])
    return out


# ---------------------------------------------------------------------------------------------- readers
def _open_lines(path: Path):
    path = Path(path)
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _count_rest(f) -> int:
    return sum(1 for _ in f)


def decode_block(block: bytes, path: Path, first_lineno: int) -> list[str]:
    """The lines of a block of whole lines (each ending in b"\\n" except perhaps the file's last), decoded
    in one call; only on failure go line by line to name the offending line. Splits on "\\n" only."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        for k, raw in enumerate(block.split(b"\n")):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}:{first_lineno + k}: undecodable bytes at column {e.start} "
                    f"({raw[e.start:e.start + 4]!r}); the corpus must be UTF-8 (convert it with "
                    "`iconv -f <encoding> -t utf-8`)") from None
        raise  # pragma: no cover - a block fails only if one of its lines does
    lines = text.split("\n")  # never str.splitlines(): U+0085, U+2028... stay inside their line
    if block.endswith(b"\n"):
        lines.pop()  # the empty string after the block's final newline
    if "\r" in text:  # CRLF files
        lines = [x[:-1] if x.endswith("\r") else x for x in lines]
    return lines


def read_text_blocks(src_path: Path, tgt_path: Path, block: int = 2000) -> Iterator[tuple[bytes, bytes, int]]:
    """Aligned blocks of `block` raw lines of two files as (src_bytes, tgt_bytes, first_lineno), undecoded:
    bytes cross a process boundary almost for free, so workers decode them. A length mismatch names both
    files and their line counts."""
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    with _open_lines(src_path) as fs, _open_lines(tgt_path) as ft:
        n = 0
        while True:
            bs, bt = list(itertools.islice(fs, block)), list(itertools.islice(ft, block))  # b"\n" splits only
            if len(bs) != len(bt) or not bs:
                ns, nt = n + len(bs) + _count_rest(fs), n + len(bt) + _count_rest(ft)
                break
            yield b"".join(bs), b"".join(bt), n + 1
            n += len(bs)
    if ns != nt:
        raise DataError(
            f"line counts differ: {src_path} has {ns} lines but {tgt_path} has {nt}; the two sides must be "
            "aligned line by line (split on '\\n' only)"
        )


def read_text_pair(src_path: Path, tgt_path: Path, block: int = 4096) -> Iterator[tuple[str, str]]:
    """Aligned decoded lines of two files (see read_text_blocks)."""
    for bs, bt, first in read_text_blocks(src_path, tgt_path, block):
        yield from zip(decode_block(bs, src_path, first), decode_block(bt, tgt_path, first))


def iter_text_blocks(source: SplitSource, block: int = 2000) -> Iterator[tuple[bytes, bytes, str, str, int]]:
    """Raw blocks of a text split, its parts in order, with the file names for error messages."""
    for src_path, tgt_path in source.parts:
        for bs, bt, first in read_text_blocks(src_path, tgt_path, block):
            yield bs, bt, str(src_path), str(tgt_path), first


def _pairs_from_table(batch, src_lang: str, tgt_lang: str, where: str) -> Iterator[tuple[str, str]]:
    """Rows of an Arrow/HF batch in the hub schema: a `translation` {lang: text} column or one column per language."""
    if "translation" in batch:
        for i, row in enumerate(batch["translation"]):
            try:
                yield row[src_lang], row[tgt_lang]
            except (KeyError, TypeError):
                raise DataError(f"{where} row {i}: `translation` lacks '{src_lang}'/'{tgt_lang}' keys") from None
    elif src_lang in batch and tgt_lang in batch:
        yield from zip(batch[src_lang], batch[tgt_lang])
    else:
        raise DataError(
            f"{where}: expected a `translation` column or columns `{src_lang}` and `{tgt_lang}`, "
            f"found {sorted(batch)}"
        )


def read_parquet(path: Path, src_lang: str, tgt_lang: str) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    for rb in pq.ParquetFile(path).iter_batches(batch_size=8192):
        yield from _pairs_from_table(rb.to_pydict(), src_lang, tgt_lang, str(path))


def load_hub_split(cfg, hub_split: str):
    """`datasets.load_dataset(hub_path, hub_config, split=...)`, with an actionable error when offline."""
    import datasets

    try:
        return datasets.load_dataset(cfg["hub_path"], cfg.get("hub_config"), split=hub_split,
                                     revision=cfg.get("hub_revision"))
    except Exception as e:  # ConnectionError, DatasetNotFoundError, offline-mode errors, ... all end here
        raise DataError(
            f"could not load hub dataset {cfg['hub_path']!r} (config {cfg.get('hub_config')!r}, split "
            f"{hub_split!r}): {type(e).__name__}: {e}. Without network access, {LOCAL_DIR_HINT}"
        ) from e


def read_hub(cfg, hub_split: str) -> Iterator[tuple[str, str]]:
    ds = load_hub_split(cfg, hub_split)
    where = f"{cfg['hub_path']}:{hub_split}"
    for batch in ds.iter(batch_size=8192):  # Arrow-backed, memory-mapped: streams from the cache
        yield from _pairs_from_table(batch, cfg["src_lang"], cfg["tgt_lang"], where)


def iter_split(cfg, source: SplitSource) -> Iterator[tuple[str, str]]:
    """All pairs of one split, its parts concatenated in order."""
    for part in source.parts:
        if source.kind == "text":
            yield from read_text_pair(*part)
        elif source.kind == "parquet":
            yield from read_parquet(part[0], cfg["src_lang"], cfg["tgt_lang"])
        else:
            yield from read_hub(cfg, part[0])


def count_pairs(cfg, source: SplitSource) -> int:
    """Number of pairs without decoding (for the deterministic subset); alignment is checked when read."""
    total = 0
    for part in source.parts:
        if source.kind == "text":
            with _open_lines(part[0]) as f:
                total += _count_rest(f)
        elif source.kind == "parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(part[0]).metadata.num_rows
        else:
            total += len(load_hub_split(cfg, part[0]))
    return total


def one_line(text: str) -> str:
    """Hub segments may contain '\\n' (never in the WMT/Multi30k releases); keep one segment per line."""
    return text.replace("\r", " ").replace("\n", " ") if ("\n" in text or "\r" in text) else text


def subset_mask_indices(total: int, keep: int, seed: int) -> Sequence[int]:
    """Sorted indices of a seeded uniform subset (the WMT train file is ordered by corpus, so a prefix
    would be all Europarl)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=keep, replace=False))
