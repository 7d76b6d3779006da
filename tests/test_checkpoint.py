"""Checkpoint files: safe loading, atomic keep-last-k, corrupt/truncated files, averaging, metrics resume."""

import json
import random
import warnings

import numpy as np
import pytest
import torch

from adafactor_repro.train.checkpoint import (
    BEST,
    LAST,
    CheckpointError,
    average_checkpoints,
    find_resume_checkpoint,
    load_checkpoint,
    periodic_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from adafactor_repro.train.metrics import MetricsLogger, truncate_metrics


def _state(update: int, value: float = 0.0) -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()  # so that the optimizer has state (step counters, moments) to save
    with torch.no_grad():
        model.weight.fill_(value)
        model.bias.fill_(value)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (k + 1))
    return {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "sampler": {"epoch": 2, "position": 17}, "rng": rng_state(), "update": update, "epoch": 2,
        "config": {"trainer": {"max_update": 10}, "name": "x"}, "model_args": {"d_model": 32},
        "data_dir": "/tmp/d", "git_commit": None,
    }


def test_roundtrip_with_safe_loader_restores_rng(tmp_path):
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    state = _state(5)
    save_checkpoint(state, tmp_path)
    expected = (torch.rand(4), random.random(), np.random.rand(2))
    loaded = torch.load(tmp_path / LAST, weights_only=True)  # the safe loader accepts every field
    assert loaded["sampler"] == {"epoch": 2, "position": 17} and loaded["update"] == 5
    for k, v in state["model"].items():
        assert torch.equal(loaded["model"][k], v)
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(4), expected[0])
    assert random.random() == expected[1]
    assert np.array_equal(np.random.rand(2), expected[2])
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_keep_last_and_best_links(tmp_path):
    for u in (10, 20, 30, 40):
        save_checkpoint(_state(u, value=float(u)), tmp_path, periodic=True, best=(u == 20), keep_last=2)
    assert [u for u, _ in periodic_checkpoints(tmp_path)] == [30, 40]
    assert load_checkpoint(tmp_path / BEST)["update"] == 20
    assert load_checkpoint(tmp_path / LAST)["update"] == 40
    # a later save replaces checkpoint_last.pt but never alters the periodic file that shared its inode
    save_checkpoint(_state(45), tmp_path)
    assert load_checkpoint(tmp_path / "checkpoint_40.pt")["update"] == 40
    with pytest.raises(ValueError, match="lacks"):
        save_checkpoint({"model": {}}, tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_is_named_and_previous_one_is_used(tmp_path, damage):
    save_checkpoint(_state(10, 1.0), tmp_path, periodic=True)
    save_checkpoint(_state(20, 2.0), tmp_path, periodic=True)
    last = tmp_path / LAST
    data = (tmp_path / "checkpoint_20.pt").read_bytes()
    last.unlink()  # break the link so that checkpoint_20.pt survives the damage of checkpoint_last.pt
    last.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a zip" * 50, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="checkpoint_last.pt: corrupt or truncated"):
        load_checkpoint(last)
    with pytest.warns(UserWarning, match="checkpoint_last.pt"):
        state, path = find_resume_checkpoint(tmp_path)
    assert path.name == "checkpoint_20.pt" and state["update"] == 20
    assert torch.equal(state["model"]["weight"], torch.full((2, 3), 2.0))


def test_all_checkpoints_corrupt_is_an_error_not_a_fresh_start(tmp_path):
    save_checkpoint(_state(10), tmp_path, periodic=True)
    for p in tmp_path.glob("checkpoint_*.pt"):
        p.unlink()
        p.write_bytes(b"\0" * 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="no usable checkpoint"):
            find_resume_checkpoint(tmp_path)
    assert find_resume_checkpoint(tmp_path / "nothing-here") is None


def test_unsafe_pickle_is_refused(tmp_path):
    p = tmp_path / LAST
    torch.save({"model": {}, "update": 1, "evil": random.Random()}, p)  # arbitrary objects: not weights-only
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(p)


def test_average_checkpoints(tmp_path):
    paths = []
    for u, v in ((1, 1.0), (2, 2.0), (3, 6.0)):
        save_checkpoint(_state(u, v), tmp_path, periodic=True, keep_last=0)
        paths.append(tmp_path / f"checkpoint_{u}.pt")
    avg = average_checkpoints(paths)
    assert torch.equal(avg["model"]["weight"], torch.full((2, 3), 3.0))
    assert avg["update"] == 3 and "optimizer" not in avg
    torch.save(avg, tmp_path / "avg.pt")
    assert load_checkpoint(tmp_path / "avg.pt")["averaged_from"][0].endswith("checkpoint_1.pt")


def test_metrics_resume_drops_records_past_the_checkpoint(tmp_path):
    log = MetricsLogger(tmp_path, wandb_cfg={"mode": "disabled"})
    for u in (10, 20, 30):
        log.log({"split": "train", "update": u, "loss": float(u), "bad": float("nan")})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"split": "train", "upd')  # a torn last line from a crash
    truncate_metrics(tmp_path / "metrics.jsonl", 20)
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in recs] == [10, 20] and recs[0]["bad"] is None
