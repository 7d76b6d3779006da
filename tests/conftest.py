import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Nothing in the suite may reach the network or a wandb server.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("ADAFACTOR_REPRO_ROOT", str(ROOT))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real corpora beside the checkout (../shared/data); tests that need them skip elsewhere."""
    p = ROOT.parent / "shared" / "data"
    if not p.is_dir():
        pytest.skip("../shared/data not present")
    return p


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests use tiny models: one intra-op thread is as fast and cannot thrash when the machine is busy
    (two OpenMP threads on a loaded 2-core machine ran tiny models 10-20x slower)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
