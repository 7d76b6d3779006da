"""Data pipeline benchmark (`make bench-data`): adafactor_repro.bench.data (its docstring says what is
measured). Writes results/bench_data.md.

    python scripts/bench_data.py [--data-dir ../shared/data] [--repeat 4] [--trials 2]
"""

import sys

from adafactor_repro.bench.data import main

if __name__ == "__main__":
    sys.exit(main())
