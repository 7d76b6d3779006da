"""A sync-free training step: host-device synchronisations counted per update on CPU (HostSyncCounter, a
TorchDispatchMode), through the real loop at tiny size. Target: one per update (the finite check), plus
one read of the logged values per log interval."""

from __future__ import annotations

import pytest
import torch

from adafactor_repro.bench.syncs import HostSyncCounter
from adafactor_repro.data import collate
from adafactor_repro.model import Transformer, TransformerConfig
from adafactor_repro.train import distributed as D
from adafactor_repro.train.loop import Trainer
from adafactor_repro.train.step import forward_loss


def test_counter_sees_item_tolist_nonzero_and_mask_indexing():
    x = torch.arange(6.0)
    with HostSyncCounter() as c:
        x.sum().item()
        x.tolist()
        bool(x.max() > 2)
        x[x > 2]
        x.nonzero()
        x.index_select(0, torch.tensor([1, 2]))  # a gather of known size: no sync
        x * 2
    assert c.ops == {"_local_scalar_dense": 2, "tolist": 1, "index[bool mask]": 1, "nonzero": 1}


def test_counter_sees_reads_under_inference_mode():
    """Inference mode hands the mode ``item`` and ``is_nonzero`` undecomposed (decoding runs under it)."""
    with torch.inference_mode():
        x = torch.arange(6.0)
        with HostSyncCounter() as c:
            x.sum().item()
            bool(x.max() > 2)
            x.nonzero()
    assert c.ops == {"item": 1, "is_nonzero": 1, "nonzero": 1}


def test_packed_targets_remove_the_syncs_of_the_masked_forward():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=50, d_model=16, n_heads=2, ffn_dim=32, encoder_layers=1,
                                          decoder_layers=1))
    b = collate([(torch.arange(4, 9).numpy(), torch.arange(5, 8).numpy()), (torch.arange(4, 6).numpy(),
                                                                             torch.arange(4, 12).numpy())])
    masked = {k: v for k, v in b.items() if k not in ("target_index", "target_tokens")}
    counts = {}
    for name, batch in (("index", b), ("mask", masked)):
        with HostSyncCounter() as c:
            loss, _ = forward_loss(model, batch, label_smoothing=0.1)
            loss.backward()
        counts[name] = c.total
    assert counts == {"index": 0, "mask": 3}  # target[mask], h[mask] and its backward


@pytest.mark.slow
@pytest.mark.parametrize("optim", ["adafactor", "adam"])
def test_training_step_syncs_once_per_update_and_logs_once_per_interval(make_cfg, optim):
    cfg = make_cfg(f"optim={optim}", "trainer.log_interval=4", "trainer.max_update=12",
                   "trainer.val_interval=1000", "trainer.save_interval=1000", "trainer.update_freq=2")
    trainer = Trainer(cfg)
    # Host-only reads: the DataLoader's worker seed (a CPU generator, once per epoch) and, for Adam,
    # torch.optim's step counters (.item() of CPU tensors, on a GPU too); the CPU counter cannot tell them
    # from device reads, so they are tallied apart by where they come from.
    ignore = ("torch/utils/data/",) + (("torch/optim/",) if optim == "adam" else ())
    per_update, ignored = [], []
    try:
        trainer.setup()
        for _ in range(12):
            with HostSyncCounter(ignore=ignore) as c:
                assert trainer.train_step()
            per_update.append(dict(c.ops))
            ignored.append(dict(c.ignored))
    finally:
        trainer.close()
        D.cleanup()
    logged = [u for u in range(1, 13) if u % 4 == 0]
    for u, ops in enumerate(per_update, 1):
        assert sum(ops.values()) == (2 if u in logged else 1), (u, ops)
        assert ops.get("_local_scalar_dense") == 1  # the finite check
        if u in logged:
            assert ops.get("tolist") == 1  # the window and the optimizer statistics in one read
    assert sum(x.get("_local_scalar_dense", 0) for x in ignored) >= 2  # two epochs began: the seed draws
