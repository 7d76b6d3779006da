"""Train one configuration: `python scripts/train.py experiments=afx_adafactor schedule=no_warmup`.

Rerunning the same command resumes from the run directory's checkpoint_last.pt; a completed run is not
retrained. Multi-GPU: `torchrun --nproc_per_node=N scripts/train.py ...`. SLURM: `hydra/launcher=slurm -m`.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Python puts scripts/ first on sys.path; its tabulate.py would shadow the `tabulate` package sacrebleu imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "scripts"]
# configs/train.yaml's search path finds experiments/ through this variable, whatever the working directory.
os.environ.setdefault("ADAFACTOR_REPRO_ROOT", str(ROOT))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from adafactor_repro.train import train

    summary = train(cfg)
    # The sweep's return value (e.g. for an optimizer sweeper): the validation loss, None if there is none.
    return summary.get("valid_loss")


if __name__ == "__main__":
    main()
