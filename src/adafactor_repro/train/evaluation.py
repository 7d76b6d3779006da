"""BLEU of a trained model on the evaluation splits: hypotheses files and bleu.json in the run directory.

Shared by the end of train() and scripts/evaluate.py. Beam search and scoring are adafactor_repro.evaluate's;
this module only loads checkpoints, picks the splits and writes the files (atomically).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..data import load_raw, load_tokenizer
from ..evaluate import bleu, translate
from ..model import Transformer, TransformerConfig
from . import distributed as D
from .checkpoint import load_checkpoint
from .metrics import atomic_write_json, atomic_write_text

BLEU_FILE = "bleu.json"


def load_model(checkpoint: str | Path, device: torch.device | str = "cpu", data_dir: str | Path | None = None):
    """(model in eval mode, tokenizer, checkpoint dict) from a checkpoint file of this project."""
    state = load_checkpoint(checkpoint)
    model = Transformer(TransformerConfig(**state["model_args"]))
    model.load_state_dict(state["model"])
    model.to(device).eval()
    data_dir = Path(data_dir or state["data_dir"])
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"{checkpoint}: its data directory {data_dir} does not exist here; pass data_dir=<the prepared "
            "data directory holding spm.model> (or rebuild it with `make data` and the run's data config)"
        )
    return model, load_tokenizer(data_dir), state


def evaluate_bleu(
    model: torch.nn.Module,
    tokenizer,
    data_dir: str | Path,
    splits: list[str],
    eval_cfg,
    out_dir: str | Path | None,
    device: torch.device | str | None = None,
    max_sentences: int | None = None,
    tag: str = "",
    extra: dict[str, Any] | None = None,
    sharded: bool = False,
) -> dict[str, dict[str, Any]]:
    """{split: bleu.score(...) + decoding settings and speed}; with out_dir, writes hyp<tag>.<split>.txt and
    merges the results into out_dir/bleu.json (keyed by split, plus tag when given). `extra` (e.g. which
    checkpoint and update) is stored in every split's entry.

    `sharded` (every rank of a process group calls it): rank r decodes sentences r, r+R, ...; rank 0
    gathers the hypotheses and scores them, the other ranks return {}."""
    rank, world = (D.rank_and_world() if sharded else (0, 1))
    was_training = model.training
    model.eval()
    results: dict[str, dict[str, Any]] = {}
    for split in splits:
        sources, references = load_raw(data_dir, split)
        if max_sentences:
            sources, references = sources[: int(max_sentences)], references[: int(max_sentences)]
        t0 = time.perf_counter()
        with torch.no_grad():
            hyps = translate(model, tokenizer, sources[rank::world], beam=int(eval_cfg.beam),
                             lenpen=float(eval_cfg.lenpen), batch_tokens=int(eval_cfg.batch_tokens),
                             max_len_a=float(eval_cfg.max_len_a), max_len_b=int(eval_cfg.max_len_b))
        if world > 1:
            shards = D.gather_object(hyps)
            if shards is None:  # not rank 0: nothing to score
                continue
            hyps = [""] * len(sources)
            for r, part in enumerate(shards):
                hyps[r::world] = part
        seconds = time.perf_counter() - t0
        r = dict(bleu.score(hyps, references))
        r.update(sentences=len(sources), beam=int(eval_cfg.beam), lenpen=float(eval_cfg.lenpen),
                 decode_seconds=round(seconds, 3), sentences_per_s=len(sources) / seconds if seconds else None,
                 **(extra or {}))
        if out_dir is not None:
            hyp_file = Path(out_dir) / f"hyp{tag}.{split}.txt"
            atomic_write_text(hyp_file, "".join(h + "\n" for h in hyps))
            r["hypotheses"] = hyp_file.name
        results[split + tag] = r
    model.train(was_training)
    if out_dir is not None:
        path = Path(out_dir) / BLEU_FILE
        merged = json.loads(path.read_text()) if path.exists() else {}
        merged.update(results)
        atomic_write_json(path, merged)
    return results
