"""Optimizer state per rank and optimizer-step communication under FSDP2 for Transformer base and big, on the
meta device over a fake process group (no GPU, one process): adafactor_repro.bench.fsdp_memory (its
docstring says what is measured). Prints the markdown table of docs/optimizer.md, "Under FSDP2".

    python scripts/bench_fsdp_memory.py [--world 1 8 64]
"""

import sys

from adafactor_repro.bench.fsdp_memory import main

if __name__ == "__main__":
    sys.exit(main())
