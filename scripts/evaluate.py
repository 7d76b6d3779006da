"""BLEU of a run directory or a checkpoint: hypotheses files and bleu.json (sacreBLEU + signature, chrF,
tokenized compound-split BLEU). Arguments are key=value, like the other entry points:

    python scripts/evaluate.py run_dir=runs/cpu/afx_adam-warmup                  # checkpoint_last.pt
    python scripts/evaluate.py run_dir=runs/cpu/afx_adam-warmup checkpoint=checkpoint_best.pt beam=1
    python scripts/evaluate.py checkpoint=/path/checkpoint_avg5.pt splits=[test] out_dir=/tmp/eval

Decoding settings default to the run's own `eval` config (beam 4, length penalty 0.6, max length
source + 50). Results of a checkpoint other than checkpoint_last.pt are stored under `<split>@<name>`
(e.g. `test@checkpoint_best`), so the end-of-training numbers are never overwritten silently.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Python puts scripts/ first on sys.path; its tabulate.py would shadow the `tabulate` package sacrebleu imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "scripts"]
os.environ.setdefault("ADAFACTOR_REPRO_ROOT", str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

DEFAULTS = {
    "run_dir": None,       # a run directory (holds checkpoint_*.pt)
    "checkpoint": None,    # a file name inside run_dir, or a path; default checkpoint_last.pt
    "splits": None,        # default: the run's eval.splits (valid, test)
    "beam": None, "lenpen": None, "batch_tokens": None, "max_len_a": None, "max_len_b": None,
    "max_sentences": None,  # evaluate a prefix only (quick checks); BLEU of the paper is on the full set
    "data_dir": None,      # the prepared data directory, if not the one recorded in the checkpoint
    "out_dir": None,       # where bleu.json and hyp files go; default: run_dir or the checkpoint's folder
    "device": "auto",
    "num_threads": None,
}


def parse(argv: list[str]):
    bad = [a for a in argv if "=" not in a]
    if bad:
        sys.exit(f"evaluate.py: arguments are key=value (got {bad}); keys: {', '.join(DEFAULTS)}")
    cli = OmegaConf.from_dotlist(argv)
    unknown = sorted(set(cli) - set(DEFAULTS))
    if unknown:
        sys.exit(f"evaluate.py: unknown keys {unknown}; known: {', '.join(DEFAULTS)}")
    args = OmegaConf.merge(OmegaConf.create(DEFAULTS), cli)
    if not args.run_dir and not args.checkpoint:
        sys.exit("evaluate.py: give run_dir=<run directory> and/or checkpoint=<file>")
    return args


def main(argv: list[str]) -> dict:
    args = parse(argv)
    import torch

    from adafactor_repro.train.distributed import resolve_device
    from adafactor_repro.train.evaluation import evaluate_bleu, load_model

    if args.num_threads:
        torch.set_num_threads(int(args.num_threads))
    ckpt = Path(args.checkpoint or "checkpoint_last.pt")
    if args.run_dir and not ckpt.is_absolute() and not ckpt.exists():
        ckpt = Path(args.run_dir) / ckpt
    if not ckpt.is_file():
        sys.exit(f"evaluate.py: checkpoint {ckpt} not found"
                 + (f"; {args.run_dir} holds {sorted(p.name for p in Path(args.run_dir).glob('*.pt'))}"
                    if args.run_dir and Path(args.run_dir).is_dir() else ""))
    device = resolve_device(args.device)
    model, tokenizer, state = load_model(ckpt, device, args.data_dir)
    eval_cfg = OmegaConf.create((state.get("config") or {}).get("eval") or {
        "beam": 4, "lenpen": 0.6, "batch_tokens": 8192, "max_len_a": 1.0, "max_len_b": 50, "splits": ["valid", "test"]})
    for k in ("beam", "lenpen", "batch_tokens", "max_len_a", "max_len_b"):
        if args[k] is not None:
            eval_cfg[k] = args[k]
    splits = list(args.splits) if args.splits is not None else list(eval_cfg.splits)
    out_dir = Path(args.out_dir or args.run_dir or ckpt.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = "" if ckpt.name == "checkpoint_last.pt" else f"@{ckpt.stem}"
    data_dir = args.data_dir or state["data_dir"]
    results = evaluate_bleu(model, tokenizer, data_dir, splits, eval_cfg, out_dir, device,
                            max_sentences=args.max_sentences, tag=tag,
                            extra={"checkpoint": str(ckpt), "update": int(state["update"])})
    print(f"{ckpt} (update {state['update']}), beam {eval_cfg.beam}, lenpen {eval_cfg.lenpen} -> {out_dir / 'bleu.json'}")
    for key, r in results.items():
        print(f"  {key:24s} sacreBLEU {r['bleu']:6.2f}  chrF {r['chrf']:6.2f}  "
              f"tok+compound-split BLEU {r.get('tok_bleu_compound_split', float('nan')):6.2f}  "
              f"({r['sentences']} sentences, {r['sentences_per_s']:.1f}/s)")
    print(f"  signature: {next(iter(results.values()))['bleu_signature']}" if results else "")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
