"""Optimizer step benchmark (`make bench-optim`): adafactor_repro.bench.optim (its docstring says what is
measured). Writes results/bench_optim.md, or results/bench_optim_cuda.md with --device cuda.

    python scripts/bench_optim.py [--device cuda] [--steps 15] [--only Adafactor Adam]
"""

import sys

from adafactor_repro.bench.optim import main

if __name__ == "__main__":
    sys.exit(main())
