import os
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Nothing in the suite may reach the network or a wandb server.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("ADAFACTOR_REPRO_ROOT", str(ROOT))
# Without a GPU the Triton optimizer kernels run under the Triton interpreter (tests/test_optim_triton.py);
# triton fixes its mode when first imported, so this is set before any test module can import it.
if not Path("/dev/nvidiactl").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# A toy word-for-word "translation" with a fixed reordering, learnable in a few dozen updates.
WORDS = {
    "a": "ein", "dog": "hund", "cat": "katze", "runs": "rennt", "sleeps": "schlaeft", "red": "rot",
    "big": "gross", "small": "klein", "house": "haus", "in": "im", "the": "der", "garden": "garten",
    "man": "mann", "sees": "sieht", "woman": "frau", "child": "kind", "plays": "spielt", "ball": "ball",
}

# A model, data and budget small enough for a training run in a second or two (the real configs/train.yaml
# composed with these overrides). The toy corpus has 16 evaluation pairs, under the real configs'
# data.min_eval_pairs.
TINY = [
    "data.spm.vocab_size=48", "data.num_workers=1", "data.min_eval_pairs=1", "model.d_model=32", "model.n_heads=2",
    "model.ffn_dim=64", "model.encoder_layers=1", "model.decoder_layers=1", "trainer.max_tokens=256",
    "trainer.num_threads=1", "logger.mode=disabled", "eval.beam=2", "eval.max_len_b=10",
]


def write_toy_corpus(root: Path, n_train: int = 240, n_eval: int = 16, seed: int = 0) -> Path:
    """train / val / test_2016_flickr .en/.de files, named as Multi30k's (configs/data/multi30k.yaml)."""
    rng = random.Random(seed)
    keys = sorted(WORDS)

    def pairs(n):
        out = []
        for _ in range(n):
            src = [rng.choice(keys) for _ in range(rng.randint(2, 7))]
            out.append((" ".join(src), " ".join(WORDS[w] for w in reversed(src))))
        return out

    root.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", n_train), ("val", n_eval), ("test_2016_flickr", n_eval)):
        ps = pairs(n)
        (root / f"{stem}.en").write_text("".join(s + "\n" for s, _ in ps))
        (root / f"{stem}.de").write_text("".join(t + "\n" for _, t in ps))
    return root


def compose_tiny(run_dir: Path, corpus: Path, data_root: Path, *overrides: str):
    """configs/train.yaml composed as @hydra.main would, at toy size (TINY), for run_dir."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True, overrides=[
            f"data.local_dir={corpus}", f"data.root={data_root}", *TINY,
            "trainer.max_update=30", "trainer.log_interval=5", "trainer.val_interval=10",
            "trainer.save_interval=10", "eval.splits=[valid,test]", "schedule.warmup_updates=10",
            "schedule.time_scale=1.0", "schedule.warmup_time_scale=null", "optim.lr=1.0", f"run_dir={run_dir}",
            *overrides,
        ])
    HydraConfig.instance().set_config(cfg)  # as @hydra.main does: ${hydra:...} and the choices resolve
    return cfg


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory) -> Path:
    return write_toy_corpus(tmp_path_factory.mktemp("toy") / "corpus")


@pytest.fixture(scope="session")
def toy_data_root(tmp_path_factory) -> Path:
    """One data root for the session: the content-hashed build of the toy corpus is made once."""
    return tmp_path_factory.mktemp("toy_data")


@pytest.fixture
def make_cfg(tmp_path, toy_corpus, toy_data_root):
    """make_cfg(*overrides, run="run"): a toy-size training config whose run directory is tmp_path/run."""

    def make(*overrides: str, run: str = "run"):
        return compose_tiny(tmp_path / run, toy_corpus, toy_data_root, *overrides)

    return make


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real corpora beside the checkout (../shared/data); tests that need them skip elsewhere."""
    p = ROOT.parent / "shared" / "data"
    if not p.is_dir():
        pytest.skip("../shared/data not present")
    return p


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_from_the_start():
    """The same for module- and session-scoped fixtures, which are set up before any function's fixture
    (test_beam's trained model took minutes instead of seconds on a loaded machine with two threads)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests use tiny models: one intra-op thread is as fast and cannot thrash when the machine is busy
    (two OpenMP threads on a loaded 2-core machine ran tiny models 10-20x slower)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
