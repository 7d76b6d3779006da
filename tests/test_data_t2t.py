"""`data=wmt14_t2t`: the paper's t2t corpus (hub `wmt/wmt_t2t`, config `de-en`), offline on a parquet fixture
laid out as that hub repository is (de-en/<split>-*.parquet with a `translation` column)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from test_data import _hub_fixture

from adafactor_repro.data import data_config, load_meta, load_raw, prepare


def test_wmt14_t2t_config_names_the_t2t_hub_corpus(repo_root):
    cfg = data_config("wmt14_t2t")
    assert (cfg["hub_path"], cfg["hub_config"]) == ("wmt/wmt_t2t", "de-en")
    assert cfg["splits"] == {"train": "train", "valid": "newstest2013", "test": "newstest2014"}
    assert cfg["spm"]["vocab_size"] == 32000 and cfg["clean"] == data_config("wmt14")["clean"]
    with initialize_config_dir(str(repo_root / "configs"), version_base="1.3"):
        composed = compose("train", overrides=["scale=gpu", "data=wmt14_t2t"])
    assert composed.data.hub_path == "wmt/wmt_t2t" and composed.model.d_model == 512


def test_wmt14_t2t_builds_from_a_local_copy_of_the_hub_layout(tmp_path):
    splits = _hub_fixture(tmp_path / "wmt_t2t", "wmt")
    cfg = dict(data_config("wmt14_t2t"), hub_path=str(tmp_path / "wmt_t2t"), root=str(tmp_path / "data"),
               num_workers=1, min_eval_pairs=1, spm={"model_type": "unigram", "vocab_size": 120, "input_sentence_size": 5000,
                                   "character_coverage": 1.0, "hard_vocab_limit": False})
    out = prepare(cfg)
    meta = load_meta(out)
    assert meta["source"]["kind"] == "hub" and meta["splits"]["train"]["read"] == len(splits["train"])
    src, ref = load_raw(out, "valid")
    assert src == [s for s, _ in splits["validation"]] and ref == [t for _, t in splits["validation"]]
    assert load_raw(out, "test")[1] == [t for _, t in splits["test"]]
