"""Training and beam-search speed against a Hugging Face MarianMTModel of identical dimensions, and the
training loop's overhead (`make bench-train`): adafactor_repro.bench.train. Writes results/bench_train.md.

    python scripts/bench_train.py                      # small + base
    python scripts/bench_train.py --models small --train-steps 3 --beam-sentences 16   # a quick look
"""

import sys

from adafactor_repro.bench.train import main

if __name__ == "__main__":
    sys.exit(main())
