"""BLEU of a trained model on the evaluation splits: hypotheses files and bleu.json in the run directory.

Shared by the end of train() and scripts/evaluate.py. Beam search and scoring are adafactor_repro.evaluate's;
this module only loads checkpoints, picks the splits and writes the files (atomically).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import ConfigError, EvalConfig, config_root, load_group, typed
from ..data import DataError, check_artifact, load_raw, load_tokenizer
from ..evaluate import bleu, translate
from ..files import atomic_write_json, atomic_write_text
from ..model import Transformer, TransformerConfig
from . import distributed as D
from .checkpoint import load_checkpoint

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
    tok = load_tokenizer(data_dir)
    sha = check_artifact(data_dir, tok)
    want = ((state.get("config") or {}).get("data_artifact") or {}).get("spm_sha256")
    if tok.vocab_size != model.cfg.vocab_size or (want and want != sha):
        raise DataError(f"{data_dir}/spm.model ({tok.vocab_size} pieces, sha256 {sha[:12]}) is not the tokenizer "
                        f"{checkpoint} was trained with ({model.cfg.vocab_size} pieces"
                        + (f", sha256 {want[:12]}" if want else "") + "): pass data_dir=<the run's data directory>")
    return model, tok, state


def evaluate_bleu(
    model: torch.nn.Module,
    tokenizer,
    data_dir: str | Path,
    splits: list[str],
    eval_cfg: EvalConfig,
    out_dir: str | Path | None,
    max_sentences: int | None = None,
    tag: str = "",
    extra: dict[str, Any] | None = None,
    sharded: bool = False,
    say=print,
) -> dict[str, dict[str, Any]]:
    """{split: bleu.score(...) + decoding settings and speed}; with out_dir, writes hyp<tag>.<split>.txt and
    merges the results into out_dir/bleu.json (keyed by split, plus tag when given). `extra` (e.g. which
    checkpoint and update) is stored in every split's entry.

    `sharded` (every rank of a process group calls it): rank r decodes sentences r, r+R, ...; rank 0
    gathers the hypotheses and scores them, the other ranks return {}.

    Rank 0 reports through `say` (None: silent): a line when a split's decode starts, one every
    DecodeProgress.EVERY_S seconds with the count and an ETA, and one with the BLEU at the end."""
    rank, world = (D.rank_and_world() if sharded else (0, 1))
    was_training = model.training
    model.eval()
    results: dict[str, dict[str, Any]] = {}
    for split in splits:
        sources, references = load_raw(data_dir, split)
        if max_sentences:
            sources, references = sources[:max_sentences], references[:max_sentences]
        t0 = time.perf_counter()
        progress = DecodeProgress(split, len(sources[rank::world]), say if rank == 0 else None,
                                  shard=f" (rank 0's shard of {len(sources)})" if world > 1 else "")
        with torch.no_grad():
            hyps = translate(model, tokenizer, sources[rank::world], beam=eval_cfg.beam, lenpen=eval_cfg.lenpen,
                             batch_tokens=eval_cfg.batch_tokens, max_len_a=eval_cfg.max_len_a,
                             max_len_b=eval_cfg.max_len_b, progress=progress)
        if world > 1:
            shards = D.gather_object(hyps)
            if shards is None:  # not rank 0: nothing to score
                continue
            hyps = [""] * len(sources)
            for r, part in enumerate(shards):
                hyps[r::world] = part
        seconds = time.perf_counter() - t0
        r = dict(bleu.score(hyps, references))
        r.update(sentences=len(sources), beam=eval_cfg.beam, lenpen=eval_cfg.lenpen,
                 decode_seconds=round(seconds, 3), sentences_per_s=len(sources) / seconds if seconds else None,
                 **(extra or {}))
        if out_dir is not None:
            hyp_file = Path(out_dir) / f"hyp{tag}.{split}.txt"
            atomic_write_text(hyp_file, "".join(h + "\n" for h in hyps))
            r["hypotheses"] = hyp_file.name
        results[split + tag] = r
        if say is not None:
            say(f"[decode] {split}: {len(sources)} sentences in {seconds:.1f} s, sacreBLEU {r['bleu']:.2f}")
    model.train(was_training)
    if out_dir is not None:
        path = Path(out_dir) / BLEU_FILE
        merged = json.loads(path.read_text()) if path.exists() else {}
        merged.update(results)
        atomic_write_json(path, merged)
    return results


class DecodeProgress:
    """translate()'s progress callback: a start line, then a line at most every EVERY_S seconds."""

    EVERY_S = 10.0

    def __init__(self, split: str, total: int, say=print, shard: str = ""):
        self.split, self.total, self.say, self.shard = split, total, say, shard
        self.t0 = self.last = time.perf_counter()
        if say is not None:
            say(f"[decode] {split}: {total} sentences{shard} ...")

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if self.say is None or now - self.last < self.EVERY_S or done >= self.total:
            return
        self.last = now
        from .metrics import fmt_duration

        left = (now - self.t0) / max(done, 1) * (self.total - done)
        self.say(f"[decode] {self.split}: {done}/{self.total} sentences{self.shard}, {fmt_duration(now - self.t0)}"
                 f" elapsed, about {fmt_duration(left)} left")


@dataclass
class EvaluateArgs:
    """scripts/evaluate.py's key=value arguments. The decoding keys (beam ... max_sentences) default to
    None = the run's own `eval` config (configs/eval/default.yaml for a checkpoint that stores none)."""

    run_dir: str | None = None     # a run directory (holds checkpoint_*.pt)
    checkpoint: str | None = None  # a file name inside run_dir, or a path; default checkpoint_last.pt
    splits: list[str] | None = None
    beam: int | None = None
    lenpen: float | None = None
    batch_tokens: int | None = None
    max_len_a: float | None = None
    max_len_b: int | None = None
    max_sentences: int | None = None  # evaluate a prefix only (quick checks); the paper's BLEU is on the full set
    data_dir: str | None = None    # the prepared data directory, if not the one recorded in the checkpoint
    out_dir: str | None = None     # where bleu.json and hyp files go; default: run_dir or the checkpoint's folder
    device: str = "auto"
    num_threads: int | None = None


def parse_evaluate_args(argv: list[str]) -> EvaluateArgs:
    keys = ", ".join(f.name for f in fields(EvaluateArgs))
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ConfigError(f"arguments are key=value (got {bad}); keys: {keys}")
    try:
        args = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EvaluateArgs), OmegaConf.from_dotlist(argv)))
    except OmegaConfBaseException as e:
        unknown = sorted(set(a.split("=", 1)[0] for a in argv) - {f.name for f in fields(EvaluateArgs)})
        what = f"unknown keys {unknown}" if unknown else str(e).splitlines()[0]
        raise ConfigError(f"{what}; known: {keys}") from None
    if not args.run_dir and not args.checkpoint:
        raise ConfigError("give run_dir=<run directory> and/or checkpoint=<file>")
    return args


def evaluate_checkpoint(args: EvaluateArgs) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """BLEU of the checkpoint `args` names: ({split[@checkpoint]: result}, a description for the report)."""
    from .distributed import resolve_device

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    ckpt = Path(args.checkpoint or "checkpoint_last.pt")
    if args.run_dir and not ckpt.is_absolute() and not ckpt.exists():
        ckpt = Path(args.run_dir) / ckpt
    if not ckpt.is_file():
        held = (f"; {args.run_dir} holds {sorted(p.name for p in Path(args.run_dir).glob('*.pt'))}"
                if args.run_dir and Path(args.run_dir).is_dir() else "")
        raise ConfigError(f"checkpoint {ckpt} not found{held}")
    device = resolve_device(args.device)
    model, tokenizer, state = load_model(ckpt, device, args.data_dir)
    # the defaults file, then what the run trained with, then the command line
    eval_cfg = {**load_group(config_root() / "eval" / "default.yaml"), **((state.get("config") or {}).get("eval") or {})}
    eval_cfg.update({f.name: getattr(args, f.name) for f in fields(EvalConfig) if getattr(args, f.name) is not None})
    eval_cfg = typed(eval_cfg, EvalConfig, "eval")
    out_dir = Path(args.out_dir or args.run_dir or ckpt.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = "" if ckpt.name == "checkpoint_last.pt" else f"@{ckpt.stem}"
    results = evaluate_bleu(model, tokenizer, args.data_dir or state["data_dir"], eval_cfg.splits, eval_cfg, out_dir,
                            max_sentences=eval_cfg.max_sentences, tag=tag,
                            extra={"checkpoint": str(ckpt), "update": int(state["update"])})
    return results, {"checkpoint": ckpt, "update": state["update"], "eval": eval_cfg, "out_dir": out_dir}
