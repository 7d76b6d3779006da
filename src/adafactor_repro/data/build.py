"""`prepare(data_cfg) -> Path`: build (or reuse) ``<root>/<name>/<key>/`` from a data config.

The key is a hash of the options that change the artifact and of the input contents (sha256 of local files;
hub path/config/revision), so an unchanged rerun reuses the build and any changed option rebuilds it. A
build is written into a hidden temporary sibling directory and renamed into place only when complete
(``meta.json`` included), under a file lock so that concurrent callers (DDP ranks, a sweep) build once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import platform
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ..config import config_root, load_group
from .binarize import encode_split, init_worker
from .sources import (
    EVAL_SPLITS,
    SPLITS,
    DataError,
    SplitSource,
    count_pairs,
    iter_split,
    iter_text_blocks,
    load_hub_split,
    one_line,
    resolve_sources,
    subset_mask_indices,
)
from .tokenizer import BOS_ID, EOS_ID, PAD_ID, SPM_MODEL, SPM_THREADS, UNK_ID, sha256_of, train_spm

# 2: spm.model holds no build path and is trained on data.spm.num_threads threads (default SPM_THREADS), so its
#    bytes, and its sha256 in meta.json, identify the vocabulary by content.
FORMAT_VERSION = 2
META = "meta.json"
# Options that do not change the artifact and so stay out of the key.
_NOT_KEYED = ("root", "num_workers", "local_dir", "embedded", "min_eval_pairs")
_REQUIRED = ("name", "src_lang", "tgt_lang", "splits", "clean", "spm")


def _plain(cfg) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return json.loads(json.dumps(cfg))


def config_dir() -> Path:
    return config_root() / "data"


def data_config(name_or_cfg) -> dict:
    """A validated data config as a plain dict; a string is looked up as configs/data/<name>.yaml."""
    if isinstance(name_or_cfg, str | os.PathLike):
        name = str(name_or_cfg)
        path = config_dir() / f"{name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in config_dir().glob("*.yaml"))
            raise DataError(f"unknown data name {name!r}: no {path}; known: {', '.join(known) or 'none'} "
                            "(pick one with `data=<name>` or add a configs/data/<name>.yaml)")
        cfg = load_group(path)
    else:
        cfg = _plain(name_or_cfg)
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise DataError(f"data config lacks {missing}; start from one of configs/data/*.yaml")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(cfg["name"])):
        raise DataError(f"data.name={cfg['name']!r} must be a plain directory name ([A-Za-z0-9_.-]+)")
    for split in SPLITS:
        if split not in cfg["splits"]:
            raise DataError(f"data.splits lacks '{split}' (the config keys are {list(SPLITS)})")
    return cfg


def build_key(cfg: dict, sources: dict[str, SplitSource]) -> str:
    keyed = {k: v for k, v in cfg.items() if k not in _NOT_KEYED}
    blob = json.dumps({"format": FORMAT_VERSION, "cfg": keyed,
                       "inputs": {s: src.fingerprint for s, src in sources.items()}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def num_workers(cfg: dict) -> int:
    n = cfg.get("num_workers")
    if n:
        return int(n)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def _train_pairs(cfg: dict, source: SplitSource, seed: int):
    """Train pairs, restricted to the seeded `max_train_pairs` subset when set. Returns (pairs, subset info)."""
    limit = cfg.get("max_train_pairs")
    if not limit:
        return iter_split(cfg, source), None
    total = count_pairs(cfg, source)
    if limit >= total:
        return iter_split(cfg, source), {"max_train_pairs": int(limit), "total_pairs": total, "selected": total}
    chosen = subset_mask_indices(total, int(limit), seed)

    def gen():
        want = iter(chosen.tolist())
        nxt = next(want, None)
        for i, pair in enumerate(iter_split(cfg, source)):
            if i == nxt:
                yield pair
                nxt = next(want, None)

    return gen(), {"max_train_pairs": int(limit), "total_pairs": total, "selected": int(limit)}


def write_spm_sample(pairs, path: Path) -> int:
    """Both sides of every pair, one non-empty sentence a line: the file sentencepiece samples from."""
    n_lines = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for s, t in pairs:
            for side in (s, t):
                if side.strip():
                    f.write(one_line(side) + "\n")
                    n_lines += 1
    return n_lines


def _build(cfg: dict, sources: dict[str, SplitSource], out: Path, key: str) -> dict:
    t0 = time.perf_counter()
    workers = num_workers(cfg)
    spm_cfg, clean = cfg["spm"], cfg["clean"]
    seed = int(cfg.get("seed", 1))

    # 1. The joint sentencepiece model, trained on both sides of the (subset) training pairs. The text is
    #    streamed to a file and sentencepiece samples `input_sentence_size` sentences from it.
    text = out / "spm_train.txt"
    pairs, subset = _train_pairs(cfg, sources["train"], seed)
    n_lines = write_spm_sample(pairs, text)
    if n_lines == 0:
        raise DataError(f"the train split ({'; '.join(sources['train'].describe())}) has no non-empty lines")
    model = train_spm(text, out / "spm", model_type=spm_cfg["model_type"], vocab_size=spm_cfg["vocab_size"],
                      input_sentence_size=spm_cfg["input_sentence_size"],
                      character_coverage=spm_cfg.get("character_coverage", 1.0),
                      hard_vocab_limit=spm_cfg.get("hard_vocab_limit", True), seed=seed,
                      num_threads=int(spm_cfg.get("num_threads") or SPM_THREADS))
    text.unlink()
    (out / "spm.vocab").unlink(missing_ok=True)
    t_spm = time.perf_counter() - t0
    import sentencepiece as spm

    vocab_size = spm.SentencePieceProcessor(model_file=str(model)).get_piece_size()
    dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32

    # 2. Encode + clean every split in parallel. Evaluation splits also keep their raw lines (BLEU is on
    #    the full set) and are cleaned only of what the model cannot take (empty or over-long pairs).
    splits_meta = {}
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    pool = ctx.Pool(workers, initializer=init_worker, initargs=(str(model),)) if workers > 1 else None
    if pool is None:
        init_worker(str(model))
    try:
        for split in SPLITS:
            src = sources[split]
            is_eval = split in EVAL_SPLITS
            raw = (out / f"{split}.raw.{cfg['src_lang']}", out / f"{split}.raw.{cfg['tgt_lang']}") if is_eval else None
            pairs = blocks = None
            if split == "train" and src.kind == "text" and not cfg.get("max_train_pairs"):
                blocks = iter_text_blocks(src)  # the big one: workers decode, the main process moves bytes
            elif split == "train":
                pairs = _train_pairs(cfg, src, seed)[0]
            else:
                pairs = ((one_line(s), one_line(t)) for s, t in iter_split(cfg, src))
            stats = encode_split(pairs, out, split, pool=pool, dtype=dtype, max_len=clean.get("max_len"),
                                 max_ratio=None if is_eval else clean.get("max_ratio"),
                                 window=2 * workers, raw_paths=raw, blocks=blocks)
            stats["inputs"] = src.describe()
            stats["cleaned"] = ["empty", "too_long"] if is_eval else ["empty", "too_long", "ratio"]
            if is_eval:
                stats["raw_lines"] = stats["read"]
            least = int(cfg.get("min_eval_pairs") or 1) if is_eval else 1
            if stats["kept"] < least:
                # an evaluation split this small gives no BLEU worth reporting (or none: the run would
                # train for hours, then fail at its final BLEU), so the build stops here
                raise DataError(
                    f"split '{split}' has {stats['kept']} pairs after cleaning (needs >= {least}; "
                    f"{stats['read']} read, dropped {stats['dropped']}) from {'; '.join(src.describe())}; "
                    "check the files, or relax data.clean.max_len / max_ratio"
                    + (" or data.min_eval_pairs" if is_eval else ""))
            splits_meta[split] = stats
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()

    return {
        "format_version": FORMAT_VERSION,
        "name": cfg["name"],
        "key": key,
        "src_lang": cfg["src_lang"],
        "tgt_lang": cfg["tgt_lang"],
        "source": ({"kind": "local", "local_dir": str(sources["train"].where)} if sources["train"].kind != "hub" else
                   {"kind": "hub", "hub_path": cfg["hub_path"], "hub_config": cfg.get("hub_config"),
                    "hub_revision": cfg.get("hub_revision")}),
        "inputs": {s: src.fingerprint for s, src in sources.items()},
        "spm": {**spm_cfg, "sha256": sha256_of(model), "vocab_size_actual": vocab_size,
                "train_lines": n_lines, "special_ids": {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}},
        "dtype": np.dtype(dtype).name,
        "subset": subset,
        "clean": clean,
        "splits": splits_meta,
        "config": cfg,
        "build": {"seconds": round(time.perf_counter() - t0, 2), "spm_seconds": round(t_spm, 2),
                  "num_workers": workers, "host": platform.node(),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(data_cfg, *, verbose: bool = False) -> Path:
    """Build or reuse the artifacts of `data_cfg` (a config node, dict or data name); returns their directory."""
    cfg = data_config(data_cfg)
    sources = resolve_sources(cfg)
    key = build_key(cfg, sources)
    parent = Path(cfg.get("root") or "data") / cfg["name"]
    final = parent / key
    if (final / META).is_file():
        return final
    for src in sources.values():  # fail before creating anything when the hub is unreachable
        if src.kind == "hub":
            load_hub_split(cfg, src.parts[0][0])
    parent.mkdir(parents=True, exist_ok=True)
    with _locked(parent / f".{key}.lock"):
        if (final / META).is_file():  # another process built it while we waited
            return final
        for stale in parent.glob(f".{key}.tmp-*"):  # left by a killed build (we hold the lock: none is live)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=parent))
        try:
            if verbose:
                print(f"[data] building {final} from {sources['train'].kind} inputs ...", flush=True)
            meta = _build(cfg, sources, tmp, key)
            meta_tmp = tmp / (META + ".tmp")
            meta_tmp.write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
            os.replace(meta_tmp, tmp / META)
            if final.exists():  # a stale, incomplete directory (no meta.json) from an older layout
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def load_meta(data_dir: str | Path) -> dict:
    path = Path(data_dir) / META
    if not path.is_file():
        raise DataError(f"{path} not found: {data_dir} is not a prepared data directory "
                        "(run `make data` or adafactor_repro.data.prepare)")
    return json.loads(path.read_text())


__all__ = ["prepare", "load_meta", "data_config", "build_key", "SPM_MODEL", "DataError"]
