"""Data identified by content (issue 17): the same corpus and config give the same spm.model bytes under any
data.root, and a data directory whose tokenizer, vocabulary and ids do not belong together is refused in one
line before update 1, naming the file and the fix."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from adafactor_repro.data import (
    DataError,
    TranslationDataset,
    check_artifact,
    load_tokenizer,
    prepare,
    unigram_nll,
)
from adafactor_repro.data.build import data_config
from adafactor_repro.data.tokenizer import sha256_of


def _cfg(corpus, root, **spm):
    cfg = data_config("multi30k")
    cfg.update(local_dir=str(corpus), root=str(root), num_workers=1, min_eval_pairs=1)
    cfg["spm"] = {**cfg["spm"], "vocab_size": 60, "hard_vocab_limit": False, **spm}
    return cfg


def test_spm_model_is_byte_identical_under_any_root(toy_corpus, tmp_path):
    a = prepare(_cfg(toy_corpus, tmp_path / "a"))
    b = prepare(_cfg(toy_corpus, tmp_path / "elsewhere" / "b"))
    assert a.name == b.name  # the same key
    assert (a / "spm.model").read_bytes() == (b / "spm.model").read_bytes()
    assert b"spm_train.txt" not in (a / "spm.model").read_bytes()  # no build path inside
    meta = json.loads((a / "meta.json").read_text())
    assert meta["spm"]["sha256"] == sha256_of(a / "spm.model") and meta["format_version"] == 2


def test_spm_threads_are_part_of_the_config(toy_corpus, tmp_path):
    # the pieces depend on the trainer's thread count, so it is a keyed option, not the machine's cores
    a = prepare(_cfg(toy_corpus, tmp_path, num_threads=8))
    b = prepare(_cfg(toy_corpus, tmp_path, num_threads=1))
    assert a != b


@pytest.fixture
def built(toy_corpus, tmp_path):
    return prepare(_cfg(toy_corpus, tmp_path / "d"))


def test_a_consistent_artifact_passes_and_returns_the_loaded_files_sha(built):
    tok = load_tokenizer(built)
    assert check_artifact(built, tok) == sha256_of(built / "spm.model")


def test_another_tokenizer_file_is_refused(built, toy_corpus, tmp_path):
    other = prepare(_cfg(toy_corpus, tmp_path / "o", vocab_size=40))
    shutil.copy(other / "spm.model", built / "spm.model")
    with pytest.raises(DataError, match=r"spm.model .* is not the tokenizer .* delete .* rebuild"):
        check_artifact(built, load_tokenizer(built))


def test_a_vocabulary_other_than_meta_json_is_refused(built):
    meta = json.loads((built / "meta.json").read_text())
    meta["spm"]["vocab_size_actual"] += 7
    meta["spm"]["sha256"] = None  # as an older build might lack it: the vocabulary check still holds
    (built / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="pieces, meta.json of .* says"):
        check_artifact(built, load_tokenizer(built))


def test_ids_past_the_vocabulary_are_refused_with_the_split_named(built):
    tok = load_tokenizer(built)
    meta = json.loads((built / "meta.json").read_text())
    path = built / "train.src.bin"
    ids = np.fromfile(path, dtype=meta["dtype"])
    ids[len(ids) // 2] = tok.vocab_size + 3  # same length: only a scan of the ids can see it
    ids.tofile(path)
    with pytest.raises(DataError, match=rf"train\.\*\.bin holds token id {tok.vocab_size + 3}, past the vocabulary"):
        check_artifact(built, tok)


def test_unigram_baseline_is_the_frequency_models_nll(built):
    tok = load_tokenizer(built)
    tr, va = TranslationDataset(built, "train"), TranslationDataset(built, "valid")
    u = unigram_nll(tr, va, tok.vocab_size, tok.eos_id)
    # by hand, one token at a time
    counts = np.ones(tok.vocab_size)
    for i in range(len(tr)):
        for t in [*tr[i][1].tolist(), tok.eos_id]:
            counts[t] += 1
    p = counts / counts.sum()
    toks = [t for i in range(len(va)) for t in [*va[i][1].tolist(), tok.eos_id]]
    assert u == pytest.approx(-np.mean(np.log(p[toks])), rel=1e-12)
    assert 0 < u < np.log(tok.vocab_size)  # better than a uniform guess


def test_a_run_refuses_mismatched_data_before_update_1_and_says_so_in_one_line(make_cfg, tmp_path, toy_corpus):
    import subprocess
    import sys

    cfg = make_cfg()
    built = prepare(cfg.data)
    bad_root = tmp_path / "bad"
    shutil.copytree(built.parent.parent, bad_root)
    bad = bad_root / built.parent.name / built.name
    meta = json.loads((bad / "meta.json").read_text())
    ids = np.fromfile(bad / "valid.tgt.bin", dtype=meta["dtype"])
    ids[0] = 65000
    ids.tofile(bad / "valid.tgt.bin")
    from conftest import ROOT, TINY

    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), f"data.local_dir={toy_corpus}",
                        f"data.root={bad_root}", *TINY, f"run_dir={tmp_path / 'run'}", "trainer.max_update=5"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr, r.stderr
    assert "valid.*.bin holds token id 65000, past the vocabulary" in r.stderr
    assert not (tmp_path / "run" / "summary.json").exists()  # refused before the run wrote anything
