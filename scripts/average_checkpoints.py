"""Average the parameters of the last k periodic checkpoints of a run (Vaswani et al. 2017, Section 6.1:
"the last 5 checkpoints, written at 10-minute intervals"), for evaluation with scripts/evaluate.py.

    python scripts/average_checkpoints.py runs/gpu/afx_adam-warmup-s1 --num 3
        -> runs/gpu/afx_adam-warmup-s1/checkpoint_avg3.pt
    python scripts/evaluate.py run_dir=runs/gpu/afx_adam-warmup-s1 checkpoint=checkpoint_avg3.pt

Only the checkpoints still on disk can be averaged: keep them with trainer.keep_last >= k.
"""

import argparse
from pathlib import Path


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", nargs="?", help="run directory holding checkpoint_<update>.pt files")
    ap.add_argument("--num", "-k", type=int, default=3,
                    help="average the last k periodic checkpoints (3: trainer.keep_last keeps 3 by default)")
    ap.add_argument("--inputs", nargs="+", help="explicit checkpoint files instead of a run directory")
    ap.add_argument("--output", "-o", help="output file (default <run_dir>/checkpoint_avg<k>.pt)")
    args = ap.parse_args(argv)

    from adafactor_repro.train.checkpoint import atomic_torch_save, average_checkpoints, periodic_checkpoints
    from adafactor_repro.train.errors import exit_on_user_error

    if args.inputs:
        paths = [Path(p) for p in args.inputs]
        out = Path(args.output or paths[-1].parent / f"checkpoint_avg{len(paths)}.pt")
    elif args.run_dir:
        found = periodic_checkpoints(args.run_dir)
        if args.num < 1:
            ap.error(f"--num {args.num}: must be at least 1")
        if len(found) < args.num:
            ap.error(f"{args.run_dir} holds {len(found)} periodic checkpoints "
                     f"({', '.join(p.name for _, p in found) or 'none'}), fewer than --num {args.num}; "
                     "lower --num or train with a larger trainer.keep_last")
        paths = [p for _, p in found[-args.num:]]
        out = Path(args.output or Path(args.run_dir) / f"checkpoint_avg{args.num}.pt")
    else:
        ap.error("give a run directory or --inputs")
    with exit_on_user_error("average_checkpoints.py"):
        atomic_torch_save(average_checkpoints(paths), out)
    print(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) -> {out}")
    return out


if __name__ == "__main__":
    main()
