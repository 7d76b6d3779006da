"""prepare(): sources, cleaning, sentencepiece, binarized splits, caching, atomicity, bad input."""

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from adafactor_repro.data import (
    DataError,
    TranslationDataset,
    data_config,
    load_meta,
    load_raw,
    load_tokenizer,
    prepare,
)

torch.manual_seed(0)

WORDS = ("house tree river small green quick brown dog cat bird walks runs near under over the a "
         "street city woman man child plays sings water bridge red blue old young").split()
# A deterministic "translation" of every word, of similar length, so the token-length ratio stays near 1.
GERMAN = {w: w[::-1].capitalize() for w in WORDS}


def translate(sentence: str) -> str:
    return " ".join(GERMAN[w] for w in sentence.split())


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10)))
        out.append((s, translate(s)))
    return out


def write_split(d: Path, stem: str, pairs, gz=False):
    d.mkdir(parents=True, exist_ok=True)
    for k, lang in enumerate(("en", "de")):
        data = "".join(p[k] + "\n" for p in pairs).encode("utf-8")
        if gz:
            (d / f"{stem}.{lang}.gz").write_bytes(gzip.compress(data))
        else:
            (d / f"{stem}.{lang}").write_bytes(data)


# Known bad pairs of the train split: 2 empty sides, 1 over max_len, 1 over the ratio bound.
LONG = " ".join(["house"] * 40)
BAD_TRAIN = [("", "Esuoh"), ("tree   ", "   "), (LONG, translate(LONG)),
             ("dog", translate("the quick brown dog walks near the river under the old bridge"))]


def cfg_for(local_dir, root, **over):
    cfg = {
        "name": "tiny", "hub_path": None, "hub_config": None, "local_dir": str(local_dir) if local_dir else None,
        "src_lang": "en", "tgt_lang": "de",
        "splits": {"train": "train", "valid": "dev", "test": "test"},
        "max_train_pairs": None,
        "clean": {"max_len": 30, "max_ratio": 3.0},
        "spm": {"model_type": "unigram", "vocab_size": 120, "input_sentence_size": 5000,
                "character_coverage": 1.0, "hard_vocab_limit": False},
        "seed": 1, "root": str(root), "num_workers": 1,  # in-process: forking a pool per test is slow
    }
    for k, v in over.items():
        cfg[k] = v
    return cfg


def write_corpus(d: Path):
    train = make_pairs(300)
    train[10:10] = BAD_TRAIN  # bad pairs in the middle: alignment after them must hold
    write_split(d, "train", train)
    dev = make_pairs(40, seed=1)
    dev[5] = ("", "Esuoh")  # an empty eval line: kept in the raw text, dropped from the binarized split
    dev[6] = ("the bird sings\u0085near the water", translate("the bird sings near the water"))  # NEL inside
    write_split(d, "dev", dev)
    write_split(d, "test", make_pairs(25, seed=2), gz=True)
    return train, dev


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "corpus"
    return (d, *write_corpus(d))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One build shared by the read-only tests (sentencepiece training is the slow part); with a pool of
    two encode workers, so that the path of a real build is the one these tests check."""
    tmp = tmp_path_factory.mktemp("built")
    train, dev = write_corpus(tmp / "corpus")
    cfg = cfg_for(tmp / "corpus", tmp / "data", num_workers=2)
    return prepare(cfg), cfg, train, dev


def test_layout_meta_and_cleaning_counts(built):
    out, cfg, train, dev = built
    assert out.parent == Path(cfg["root"]) / "tiny"
    for f in ["spm.model", "meta.json", "valid.raw.en", "valid.raw.de", "test.raw.en", "test.raw.de"] + [
            f"{s}.{side}.{ext}" for s in ("train", "valid", "test") for side in ("src", "tgt")
            for ext in ("bin", "off.npy")]:
        assert (out / f).is_file(), f
    assert not list(out.parent.glob(".*tmp*")), "temporary build directory left behind"
    meta = load_meta(out)
    tr = meta["splits"]["train"]
    assert tr["read"] == len(train) == 304
    assert tr["dropped"] == {"empty": 2, "too_long": 1, "ratio": 1}
    assert tr["kept"] == 300
    assert meta["dtype"] == "uint16"
    assert meta["spm"]["sha256"] and len(meta["spm"]["sha256"]) == 64
    va = meta["splits"]["valid"]
    assert (va["read"], va["kept"], va["raw_lines"], va["dropped"]["empty"]) == (40, 39, 40, 1)
    assert meta["splits"]["test"]["kept"] == 25


def test_alignment_kept_through_cleaning_and_encoding(built):
    out, _, train, _ = built
    tok = load_tokenizer(out)
    ds = TranslationDataset(out, "train")
    good = [p for p in train if p not in BAD_TRAIN]
    assert len(ds) == len(good)
    assert ds.src_lengths.dtype == np.int64 and len(ds.tgt_lengths) == len(ds)
    for i in range(len(ds)):
        s, t = ds[i]
        assert s.dtype == np.int64 and s.min() > 3 and t.min() > 3  # no specials stored
        assert tok.decode(s) == good[i][0]
        assert tok.decode(t) == good[i][1]
        assert (len(s), len(t)) == (ds.src_lengths[i], ds.tgt_lengths[i])


def test_raw_eval_text_is_every_line_uncleaned(built):
    out, _, _, dev = built
    src, ref = load_raw(out, "valid")
    assert src == [p[0] for p in dev] and ref == [p[1] for p in dev]  # the U+0085 line did not split
    assert "\u0085" in src[6] and src[5] == ""
    src, ref = load_raw(out, "test")
    assert len(src) == len(ref) == 25
    with pytest.raises(DataError, match="evaluation splits"):
        load_raw(out, "train")


def test_sentencepiece_round_trip_and_special_ids(built):
    tok = load_tokenizer(built[0])
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    import adafactor_repro.model as M  # the model states the same ids itself (it knows no tokenizer)
    assert (M.PAD_ID, M.UNK_ID, M.BOS_ID, M.EOS_ID) == (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id)
    assert [tok.sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    for text in ["the quick brown dog", "  Esuoh   Eert  ", "ｒｉｖｅｒ  tree"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == tok.normalize(text)
    assert tok.decode([2] + tok.encode("green tree") + [3, 0, 0]) == "green tree"
    assert "\u2047" in tok.decode(tok.encode("tree ☃ river"))  # an unknown character stays visible


def test_reuse_and_rebuild_on_change(corpus, tmp_path, monkeypatch):
    d, _, _ = corpus
    cfg = cfg_for(d, tmp_path / "data")
    first = prepare(cfg)
    stamp = (first / "meta.json").stat().st_mtime_ns
    import adafactor_repro.data.build as P

    monkeypatch.setattr(P, "_build", lambda *a, **k: pytest.fail("rebuilt an unchanged config"))
    cfg_other_workers = dict(cfg, num_workers=3)  # not part of the key
    assert prepare(cfg_other_workers) == first
    assert (first / "meta.json").stat().st_mtime_ns == stamp
    monkeypatch.undo()
    changed = prepare(dict(cfg, clean={"max_len": 25, "max_ratio": 3.0}))
    assert changed != first and changed.parent == first.parent
    # Editing an input file changes the key too.
    with open(d / "test.en.gz", "wb") as f:
        f.write(gzip.compress(b"house\n" * 25))
    assert prepare(cfg) not in (first, changed)


def test_interrupted_build_leaves_nothing_that_looks_complete(corpus, tmp_path, monkeypatch):
    d, _, _ = corpus
    cfg = cfg_for(d, tmp_path / "data")
    import adafactor_repro.data.build as P

    real = P.encode_split

    def crash_on_test(pairs, out, split, **kw):
        if split == "test":
            raise KeyboardInterrupt
        return real(pairs, out, split, **kw)

    monkeypatch.setattr(P, "encode_split", crash_on_test)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg)
    parent = tmp_path / "data" / "tiny"
    assert [p.name for p in parent.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.undo()
    # A SIGKILLed build cannot clean up: its temporary directory is removed by the next build of that key.
    key = P.build_key(P.data_config(cfg), P.resolve_sources(P.data_config(cfg)))
    (parent / f".{key}.tmp-killed" / "train.src.bin").parent.mkdir()
    out = prepare(cfg)
    assert (out / "meta.json").is_file()
    assert sorted(p.name for p in parent.iterdir() if not p.name.endswith(".lock")) == [out.name]


def test_subset_is_deterministic_and_list_of_stems_concatenates(tmp_path):
    d = tmp_path / "c"
    a, b = make_pairs(150, seed=3), make_pairs(150, seed=4)
    write_split(d / "part", "one", a)
    write_split(d / "part", "two", b)
    write_split(d, "dev", make_pairs(20, seed=5))
    write_split(d, "test", make_pairs(20, seed=6))
    splits = {"train": ["part/one", "part/two"], "valid": "dev", "test": "test"}
    cfg = cfg_for(d, tmp_path / "data", splits=splits, max_train_pairs=100)
    out = prepare(cfg)
    meta = load_meta(out)
    assert meta["subset"] == {"max_train_pairs": 100, "total_pairs": 300, "selected": 100}
    assert meta["splits"]["train"]["read"] == 100
    tok = load_tokenizer(out)
    ds = TranslationDataset(out, "train")
    got = [tok.decode(ds[i][0]) for i in range(len(ds))]
    assert set(got) <= {p[0] for p in a + b}
    assert any(g in {p[0] for p in b} for g in got)  # drawn from both files, not a prefix
    assert prepare(dict(cfg, root=str(tmp_path / "again"))).name == out.name  # same key, same content
    full = prepare(dict(cfg, max_train_pairs=None))
    assert load_meta(full)["splits"]["train"]["read"] == 300


def _hub_fixture(root: Path, schema: str):
    """A local folder laid out like the hub repos: wmt/wmt14 (config de-en, `translation` column) or
    bentrevett/multi30k (columns en/de)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    splits = {"train": make_pairs(120, seed=7), "validation": make_pairs(15, seed=8), "test": make_pairs(12, seed=9)}
    if schema == "wmt":
        readme = ["---", "configs:", "- config_name: de-en", "  data_files:"]
        for split, pairs in splits.items():
            (root / "de-en").mkdir(parents=True, exist_ok=True)
            table = pa.table({"translation": [{"de": t, "en": s} for s, t in pairs]})
            pq.write_table(table, root / "de-en" / f"{split}-00000-of-00001.parquet")
            readme += [f"  - split: {split}", f"    path: de-en/{split}-*"]
        (root / "README.md").write_text("\n".join(readme + ["---", ""]))
    else:
        (root / "data").mkdir(parents=True, exist_ok=True)
        for split, pairs in splits.items():
            pq.write_table(pa.table({"en": [p[0] for p in pairs], "de": [p[1] for p in pairs]}),
                           root / "data" / f"{split}-00000-of-00001.parquet")
    return splits


@pytest.mark.parametrize("schema", ["wmt", "multi30k"])
def test_hub_path_through_datasets_on_a_local_parquet_fixture(tmp_path, schema):
    splits = _hub_fixture(tmp_path / "hub", schema)
    cfg = cfg_for(None, tmp_path / "data", hub_path=str(tmp_path / "hub"),
                  hub_config="de-en" if schema == "wmt" else None,
                  hub_splits={"train": "train", "valid": "validation", "test": "test"})
    out = prepare(cfg)
    meta = load_meta(out)
    assert meta["source"]["kind"] == "hub"
    assert meta["splits"]["train"]["read"] == 120
    src, ref = load_raw(out, "test")
    assert src == [p[0] for p in splits["test"]] and ref == [p[1] for p in splits["test"]]


def test_local_parquet_with_translation_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "pq"
    d.mkdir()
    for stem, seed, n in (("train", 1, 100), ("dev", 2, 10), ("test", 3, 10)):
        pairs = make_pairs(n, seed)
        pq.write_table(pa.table({"translation": [{"en": s, "de": t} for s, t in pairs]}), d / f"{stem}.parquet")
    out = prepare(cfg_for(d, tmp_path / "data"))
    assert load_meta(out)["splits"]["train"]["read"] == 100
    assert load_raw(out, "valid")[1] == [p[1] for p in make_pairs(10, 2)]


# ------------------------------------------------------------------------------------------- bad input
def _no_artifacts(root: Path):
    return not [p for p in root.rglob("*") if p.is_dir()] if root.exists() else True


def test_mismatched_line_counts_name_both_files(corpus, tmp_path):
    d, _, _ = corpus
    (d / "dev.de").write_text((d / "dev.de").read_text() + "Extra\n")
    with pytest.raises(DataError, match=r"dev\.en has 40 lines but .*dev\.de has 41"):
        prepare(cfg_for(d, tmp_path / "data"))
    assert _no_artifacts(tmp_path / "data" / "tiny")


def test_missing_split_file_names_expected_path(corpus, tmp_path):
    d, _, _ = corpus
    (d / "dev.de").unlink()
    with pytest.raises(DataError, match=r"missing file .*corpus/dev\.de"):
        prepare(cfg_for(d, tmp_path / "data"))
    assert not (tmp_path / "data").exists()


def test_undecodable_bytes_name_file_and_line(corpus, tmp_path):
    d, _, _ = corpus
    lines = (d / "train.de").read_bytes().split(b"\n")
    lines[6] = b"Stra\xdfe"  # latin-1, not UTF-8
    (d / "train.de").write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"train\.de:7: undecodable bytes"):
        prepare(cfg_for(d, tmp_path / "data"))
    assert _no_artifacts(tmp_path / "data" / "tiny")


def test_undecodable_bytes_reported_from_an_encode_worker(built, tmp_path):
    """The train split's blocks are decoded in the pool workers; their error reaches the caller intact."""
    import multiprocessing as mp

    from adafactor_repro.data.binarize import encode_split, init_worker
    from adafactor_repro.data.sources import read_text_blocks

    (tmp_path / "a.en").write_bytes(b"house tree\n" * 5 + b"green \xff\n")
    (tmp_path / "a.de").write_bytes(b"Esuoh Eert\n" * 6)
    model = str(built[0] / "spm.model")
    blocks = ((bs, bt, "a.en", "a.de", first) for bs, bt, first in read_text_blocks(tmp_path / "a.en", tmp_path / "a.de", 2))
    with mp.get_context("fork").Pool(2, init_worker, (model,)) as pool:
        with pytest.raises(DataError, match=r"a\.en:6: undecodable bytes at column 6"):
            encode_split(None, tmp_path, "x", pool=pool, dtype=np.uint16, max_len=None, max_ratio=None, blocks=blocks)


def test_unicode_line_separators_do_not_break_alignment(tmp_path):
    d = tmp_path / "c"
    train = make_pairs(60)
    for i, sep in enumerate(["\u0085", "\u2028", "\u2029", "\x1c", "\x0b", "\x0c"]):
        s, t = train[i]
        train[i] = (s, t.replace(" ", sep, 1))
    write_split(d, "train", train)
    write_split(d, "dev", train[:8])
    write_split(d, "test", make_pairs(5, 1))
    out = prepare(cfg_for(d, tmp_path / "data"))
    assert load_meta(out)["splits"]["train"]["read"] == 60
    src, ref = load_raw(out, "valid")
    assert ref == [p[1] for p in train[:8]]
    tok, ds = load_tokenizer(out), TranslationDataset(out, "train")
    assert tok.decode(ds[30][0]) == train[30][0]


def test_empty_corpus_after_cleaning(corpus, tmp_path):
    d, _, _ = corpus
    with pytest.raises(DataError, match=r"split 'train' has 0 pairs after cleaning \(needs >= 1"):
        prepare(cfg_for(d, tmp_path / "data", clean={"max_len": 1, "max_ratio": 3.0}))
    assert _no_artifacts(tmp_path / "data" / "tiny")


def test_unknown_data_name_and_bad_config():
    with pytest.raises(DataError, match=r"unknown data name 'nope'.*known: .*multi30k.*wmt14"):
        data_config("nope")
    with pytest.raises(DataError, match="lacks"):
        data_config({"name": "x"})
    with pytest.raises(DataError, match="plain directory name"):
        data_config(dict(data_config("multi30k"), name="../evil"))


def test_no_network_no_local_dir_says_how_to_point_at_files(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing to find offline
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets", raising=False)
    cfg = dict(data_config("wmt14"), root=str(tmp_path / "data"))
    with pytest.raises(DataError, match=r"wmt/wmt14.*data\.local_dir="):
        prepare(cfg)
    assert not (tmp_path / "data").exists()
    cfg = dict(cfg, hub_path=None)
    with pytest.raises(DataError, match=r"neither data\.hub_path nor data\.local_dir"):
        prepare(cfg)


def test_configs_compose_with_hydra(repo_root):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(repo_root / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["data=wmt14_local_dev"])
    assert cfg.data.name == "wmt14_local_dev"
    assert list(cfg.data.splits.train)[0] == "dev-extra/newstest2008"
    assert cfg.data.clean.max_ratio == 1.5  # inherited from wmt14
    assert json.dumps(data_config(cfg.data), sort_keys=True) == json.dumps(data_config("wmt14_local_dev"), sort_keys=True)


def test_shared_wmt_and_multi30k_eval_sets_complete(shared_data, tmp_path):
    """The real files: newstest2014 full (3,003), newstest2013 (3,000), the dev-extra train with U+0085 in
    newstest2009.de (13,071 pairs), Multi30k test2016 (1,000). A tiny vocabulary keeps it fast."""
    small_spm = {"model_type": "unigram", "vocab_size": 300, "input_sentence_size": 4000,
                 "character_coverage": 1.0, "hard_vocab_limit": False}
    wmt = dict(data_config("wmt14_local_dev"), local_dir=str(shared_data / "wmt14-en-de"),
               root=str(tmp_path / "data"), spm=small_spm)
    out = prepare(wmt)
    meta = load_meta(out)
    assert meta["splits"]["train"]["read"] == 13071
    assert meta["splits"]["valid"]["raw_lines"] == 3000
    src, ref = load_raw(out, "test")
    assert len(src) == len(ref) == 3003
    assert src[0] == "Gutach: Increased safety for pedestrians"
    assert ref[-1] == (shared_data / "wmt14-en-de" / "newstest2014.de").read_text().split("\n")[-2]
    m30k = dict(data_config("multi30k"), local_dir=str(shared_data / "multi30k"), root=str(tmp_path / "data"),
                spm=small_spm, max_train_pairs=2000)
    out = prepare(m30k)
    assert len(load_raw(out, "test")[0]) == 1000
    assert load_meta(out)["splits"]["valid"]["raw_lines"] == 1014


def test_prepare_data_entry_point(tmp_path, repo_root):
    import subprocess
    import sys

    d = tmp_path / "corpus"
    write_corpus(d)
    cmd = [sys.executable, str(repo_root / "scripts" / "prepare_data.py"), "data=multi30k", f"data.local_dir={d}",
           "data.splits.valid=dev", "data.splits.test=test", f"data.root={tmp_path / 'data'}",
           "data.spm.vocab_size=120", "data.spm.hard_vocab_limit=false", "data.clean.max_len=30",
           "data.min_eval_pairs=1"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "train read       304  kept       300" in res.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "data"]  # no Hydra run directory
    assert "built in " in res.stdout.splitlines()[-1]
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.splitlines()[-1].startswith("reused the cached build"), again.stdout
    bad = subprocess.run(cmd[:3] + [f"data.local_dir={tmp_path / 'nowhere'}"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "nowhere is not a directory" in bad.stderr


def test_multi30k_ships_in_the_repository_and_builds_offline(tmp_path, repo_root, monkeypatch):
    """No local_dir, no network: the cpu scale's corpus is read from corpora/multi30k (checksums as in its
    README), and a build from it works (a subset and a small vocabulary keep it quick)."""
    import hashlib
    import re

    from adafactor_repro.data.sources import resolve_sources

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = data_config("multi30k")
    assert cfg["local_dir"] is None and cfg["embedded"] == "corpora/multi30k"
    sources = resolve_sources(cfg)
    assert {s.where for s in sources.values()} == {str(repo_root / "corpora" / "multi30k")}
    assert {s.kind for s in resolve_sources(dict(cfg, embedded=None)).values()} == {"hub"}  # the other source
    noted = dict(re.findall(r"\| (\S+\.(?:en|de)) \| \d+ \| ([0-9a-f]{64}) \|",
                            (repo_root / "corpora" / "multi30k" / "README.md").read_text()))
    assert len(noted) == 6
    for name, sha in noted.items():
        assert hashlib.sha256(gzip.decompress((repo_root / "corpora" / "multi30k" / f"{name}.gz").read_bytes())
                              ).hexdigest() == sha, name
    out = prepare(dict(cfg, root=str(tmp_path / "data"), max_train_pairs=500, num_workers=1,
                       spm=dict(cfg["spm"], vocab_size=300, hard_vocab_limit=False)))
    meta = load_meta(out)
    assert meta["source"] == {"kind": "local", "local_dir": str(repo_root / "corpora" / "multi30k")}
    assert meta["splits"]["valid"]["raw_lines"] == 1014 and meta["splits"]["test"]["raw_lines"] == 1000
