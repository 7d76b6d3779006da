#!/usr/bin/env python
"""Build (or reuse) the data artifacts of a config: `make data` / `make data DATA=multi30k DATA_DIR=...`.

    python scripts/prepare_data.py scale=cpu data=multi30k data.local_dir=$PWD/../shared/data/multi30k
    python scripts/prepare_data.py data=wmt14_local_dev data.local_dir=$PWD/../shared/data/wmt14-en-de

Prints the artifact directory and the split counts of its meta.json. Hydra writes no run directory here.
"""

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("ADAFACTOR_REPRO_ROOT", str(ROOT))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

if __name__ == "__main__":  # a bad override or value: one line, before Hydra starts
    from adafactor_repro.train.preflight import preflight

    preflight(sys.argv[1:], ROOT / "configs", prog="prepare_data.py")

# Data preparation is not a run: keep Hydra from creating runs/<scale>/<name>/.hydra and a log file there.
for override in ("hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=none", "hydra/hydra_logging=none"):
    if not any(a.split("=")[0] == override.split("=")[0] for a in sys.argv[1:]):
        sys.argv.append(override)


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from adafactor_repro.data import load_meta, prepare
    from adafactor_repro.train.errors import exit_on_user_error

    started = time.time()
    with exit_on_user_error("prepare_data.py"):
        out = prepare(cfg.data, verbose=True)
    meta = load_meta(out)
    # meta.json is written last, once per build: older than this command means the cache was reused
    reused = (Path(out) / "meta.json").stat().st_mtime < started
    print(f"data: {out}")
    print(f"spm: {meta['spm']['model_type']} {meta['spm']['vocab_size_actual']} pieces, sha256 {meta['spm']['sha256']}")
    for split, s in meta["splits"].items():
        print(f"  {split:5s} read {s['read']:>9,d}  kept {s['kept']:>9,d}  dropped {json.dumps(s['dropped'])}")
    if reused:
        print(f"reused the cached build (nothing rebuilt; it was built in {meta['build']['seconds']} s)")
    else:
        print(f"built in {meta['build']['seconds']} s with {meta['build']['num_workers']} workers")


if __name__ == "__main__":
    main()
