"""Train one configuration: `python scripts/train.py experiments=afx_adafactor schedule=no_warmup`.

Rerunning the same command resumes from the run directory's checkpoint_last.pt; a completed run is not
retrained. Multi-GPU: `torchrun --nproc_per_node=N scripts/train.py ...`. SLURM: `hydra/launcher=slurm -m`.
Exit status: 0 finished (completed, or diverged: a result too), 4 interrupted (SIGTERM/SIGUSR1/Ctrl-C:
checkpoint saved, rerun to resume), 1 an error (one line naming the input and the fix). A bad override or
value is found before Hydra creates the run directory (adafactor_repro.train.preflight), so it leaves none.
"""

import os
import sys
from pathlib import Path

# configs/train.yaml's search path finds experiments/ through this variable, whatever the working directory.
os.environ.setdefault("ADAFACTOR_REPRO_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

INTERRUPTED = 4


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from adafactor_repro.train import train
    from adafactor_repro.train.errors import exit_on_user_error

    with exit_on_user_error("train.py"):
        summary = train(cfg)
    if summary.get("status") not in ("completed", "diverged") and not hydra_multirun():
        sys.exit(INTERRUPTED)
    # The sweep's return value (e.g. for an optimizer sweeper): the validation loss, None if there is none.
    return summary.get("valid_loss")


def hydra_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


if __name__ == "__main__":
    from adafactor_repro.train.preflight import preflight

    preflight(sys.argv[1:], Path(__file__).resolve().parents[1] / "configs")
    main()
