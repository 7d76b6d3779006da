"""Faults and mistakes lose nothing and mislabel nothing: one test per way a user or the machine can get a
run wrong (two processes on one run directory, a typo, a changed config on resume, corrupt or edited
checkpoints, tiny evaluation splits, killed writers, exploding losses, Ctrl-C, full disks)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from adafactor_repro.config import ConfigError
from adafactor_repro.files import DirectoryLocked, DirLock, DiskFullError, atomic_write_text
from adafactor_repro.train import train
from adafactor_repro.train.checkpoint import (
    BEST,
    LAST,
    CheckpointError,
    find_resume_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
)


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _state(update: int, value: float) -> dict:
    return {"model": {"w": torch.full((256, 256), value)}, "optimizer": {}, "scheduler": {}, "sampler": {},
            "rng": rng_state(), "update": update, "epoch": 1, "config": {}}


# 1 ------------------------------------------------------------------------------------------------------
def test_a_second_process_on_a_run_directory_is_refused_naming_the_holder(tmp_path, make_cfg):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from adafactor_repro.files import DirLock
        lock = DirLock({str(run)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DirectoryLocked, match=rf"{run} is in use by pid {holder.pid} on "):
            train(make_cfg())
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing of the run was written
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the dead holder's lock: the directory is free again
    with DirLock(run):
        pass


# 2 ------------------------------------------------------------------------------------------------------
def test_an_unknown_experiment_is_an_error_listing_the_valid_ones(tmp_path, make_cfg):
    with pytest.raises(ConfigError, match=r"experiments=afx_adafactr: no .*the experiments are: .*afx_adafactor"):
        train(make_cfg("experiments=afx_adafactr"))
    assert not (tmp_path / "run" / "summary.json").exists()


# 3 + 7 --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_resume_refuses_a_changed_config_but_takes_a_longer_budget(tmp_path, make_cfg):
    run = tmp_path / "run"
    train(make_cfg("trainer.max_update=10", "trainer.bleu_at_end=false"))
    config_before = (run / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"optim\.lr: 1\.0 -> 2\.0; schedule\.warmup_updates: 10 -> 5\. "):
        train(make_cfg("trainer.max_update=20", "trainer.bleu_at_end=false", "optim.lr=2.0",
                       "schedule.warmup_updates=5"))
    assert (run / "config.yaml").read_text() == config_before  # the table still reads the true config
    # a writer killed mid-write leaves its temporary file; the next start sweeps it
    stale = run / ".checkpoint_last.pt.k1ll3d.tmp"
    stale.write_bytes(b"\0" * 1000)
    s = train(make_cfg("trainer.max_update=20", "trainer.bleu_at_end=false", "trainer.log_interval=2"))
    assert s["status"] == "completed" and s["updates"] == 20
    assert not stale.exists()
    assert "max_update: 20" in (run / "config.yaml").read_text()


# 4 ------------------------------------------------------------------------------------------------------
def test_flipped_bytes_inside_a_checkpoint_fail_its_crc_and_the_previous_one_is_used(tmp_path):
    save_checkpoint(_state(10, 1.0), tmp_path, periodic=True)
    save_checkpoint(_state(20, 2.0), tmp_path, periodic=True)
    last = tmp_path / LAST
    with zipfile.ZipFile(last) as z:  # the biggest member is the tensor data
        info = max(z.infolist(), key=lambda i: i.file_size)
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data = bytearray(last.read_bytes())
    mid = start + info.file_size // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    with open(last, "r+b") as f:  # in place, as a bad disk or a stray write would
        f.write(data)
    assert torch.load(last, weights_only=True)["update"] == 20  # torch alone would load the garbage
    with pytest.raises(CheckpointError, match=r"checkpoint_last\.pt: corrupt or truncated.*CRC-32"):
        load_checkpoint(last)
    with pytest.warns(UserWarning, match="checkpoint_last.pt"):
        state, path = find_resume_checkpoint(tmp_path)
    assert path.name == "checkpoint_20.pt" and torch.equal(state["model"]["w"], torch.full((256, 256), 2.0))


# 5 ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_test", [0, 3])
def test_an_empty_or_near_empty_eval_split_is_refused_at_build_time(tmp_path, toy_corpus, n_test):
    from adafactor_repro.data import DataError, data_config, prepare

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in toy_corpus.iterdir():
        lines = f.read_text().splitlines(keepends=True)
        (corpus / f.name).write_text("".join(lines[:n_test]) if f.name.startswith("test") else "".join(lines))
    cfg = dict(data_config("multi30k"), local_dir=str(corpus), root=str(tmp_path / "data"), num_workers=1,
               min_eval_pairs=10, spm=dict(data_config("multi30k")["spm"], vocab_size=48))
    with pytest.raises(DataError, match=rf"split 'test' has {n_test} pairs after cleaning \(needs >= 10;"):
        prepare(cfg)
    assert not list((tmp_path / "data" / "multi30k").glob("[0-9a-f]*"))  # nothing that looks built


# 8 ------------------------------------------------------------------------------------------------------
def test_an_in_place_edit_of_the_last_checkpoint_reaches_no_other(tmp_path):
    save_checkpoint(_state(10, 1.0), tmp_path, periodic=True, best=True)
    last, periodic, best = tmp_path / LAST, tmp_path / "checkpoint_10.pt", tmp_path / BEST
    assert len({p.stat().st_ino for p in (last, periodic, best)}) == 3
    with open(last, "r+b") as f:
        f.write(b"\0" * 4096)
    for p in (periodic, best):
        assert torch.equal(load_checkpoint(p)["model"]["w"], torch.full((256, 256), 1.0))


# 9 ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_finite_loss_explosion_marks_the_run_diverged(tmp_path, make_cfg, monkeypatch):
    from adafactor_repro.train import step

    real = step.label_smoothed_nll_loss

    def exploding(logits, target, eps, pad):  # what optim.lr=1e6 does: huge but finite losses
        loss, nll = real(logits, target, eps, pad)
        return loss * 1e9, nll * 1e9

    monkeypatch.setattr(step, "label_smoothed_nll_loss", exploding)
    s = train(make_cfg("trainer.max_update=20", "trainer.bleu_at_end=false"))
    assert s["status"] == "diverged" and s["diverged_at"] == 5 and s["nonfinite_total"] == 0
    assert "above 10 x ln(vocabulary 48)" in s["diverged_reason"]
    assert _summary(tmp_path / "run")["status"] == "diverged"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_save_and_say_truly_where(tmp_path, make_cfg, monkeypatch, capsys, sig):
    """The signal comes during a streak of skipped (non-finite) updates: the checkpoint is written at the
    last finite update, and the message names that update."""
    from adafactor_repro.train import step

    real = step.label_smoothed_nll_loss
    calls = {"n": 0}

    def nan_from_13th(logits, target, eps, pad):
        loss, nll = real(logits, target, eps, pad)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] >= 13:
                if calls["n"] == 15:
                    os.kill(os.getpid(), sig)
                return loss * float("nan"), nll
        return loss, nll

    monkeypatch.setattr(step, "label_smoothed_nll_loss", nan_from_13th)
    # Ctrl-C as an interactive shell delivers it: a test process started in the background (`pytest &`, a CI
    # runner) inherits SIGINT ignored, and a run leaves an ignored SIGINT alone (signals.StopFlag).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        s = train(make_cfg("trainer.max_update=30", "trainer.bleu_at_end=false"))
        restored = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert s["status"] == "running" and s["updates"] == 12
    assert torch.load(tmp_path / "run" / LAST, weights_only=True)["update"] == 12
    assert "checkpoint_last.pt saved at update 12" in capsys.readouterr().out
    assert restored is signal.default_int_handler  # the run put back the handler it found


# 11 -----------------------------------------------------------------------------------------------------
def test_a_full_disk_is_one_line_naming_the_file_and_the_old_file_survives(tmp_path, capsys):
    target = tmp_path / "summary.json"
    atomic_write_text(target, "old\n")

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    from adafactor_repro.files import atomic_write

    with pytest.raises(DiskFullError) as e:
        atomic_write(target, full)
    assert str(e.value).startswith(f"[Errno {errno.ENOSPC}] {target}: no space left on the device; free space")
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]

    from adafactor_repro.train.errors import exit_on_user_error

    with pytest.raises(SystemExit) as ex, exit_on_user_error("train.py"):
        atomic_write(target, full)
    assert ex.value.code == 1
    # a full disk met by a plain write (metrics.jsonl's appends, the data build's arrays) reads the same
    capsys.readouterr()
    with pytest.raises(SystemExit) as ex, exit_on_user_error("prepare_data.py"):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "train.src.bin"))
    err = capsys.readouterr().err
    assert ex.value.code == 1 and err.count("\n") == 1
    assert err.startswith(f"prepare_data.py: error: {tmp_path / 'train.src.bin'}: no space left on the device; ")
    with pytest.raises(PermissionError), exit_on_user_error("train.py"):  # other OS errors keep their traceback
        raise PermissionError(errno.EACCES, "Permission denied")


def test_train_script_errors_are_one_line_without_traceback(tmp_path, repo_root, toy_corpus):
    from conftest import TINY

    cmd = [sys.executable, str(repo_root / "scripts" / "train.py"), f"data.local_dir={toy_corpus}",
           f"data.root={tmp_path / 'data'}", *TINY, f"run_dir={tmp_path / 'run'}"]
    for extra, says in ((["experiments=afx_adafactr"], "experiments=afx_adafactr: no "),
                        (["trainer.max_update=ten"], "trainer.max_update: Value 'ten' of type 'str' could not be "
                                                     "converted to Integer"),
                        (["data.local_dir=/nowhere"], "data.local_dir=/nowhere is not a directory")):
        p = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        err = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(err) == 1 and err[0].startswith(f"train.py: error: {says}"), p.stderr


def test_config_changes_allowed_on_resume():
    from adafactor_repro.train.resume import config_changes

    stored = {"optim": {"lr": 1.0}, "trainer": {"max_update": 10, "update_freq": 8, "log_interval": 5},
              "logger": {"mode": "offline"}, "data_artifact": {"dir": "/a", "key": "k1"}}
    same = {"optim": {"lr": 1.0}, "trainer": {"max_update": 99, "update_freq": 8, "log_interval": 1},
            "logger": {"mode": "disabled"}, "data_artifact": {"dir": "/b", "key": "k1"}, "new_knob": 1}
    assert config_changes(stored, same) == []
    assert config_changes(stored, {**same, "data_artifact": {"dir": "/b", "key": "k2"}}) == [
        "data_artifact.key: 'k1' -> 'k2'"]
    # 8 accumulation steps on 1 process = 1 step on each of 8 processes: the same update
    one_on_8 = {**same, "trainer": {**same["trainer"], "update_freq": 1}}
    assert config_changes(stored, one_on_8, stored_world_size=1, world_size=8) == []
    assert config_changes(stored, one_on_8, stored_world_size=1, world_size=4) == ["trainer.update_freq: 8 -> 1"]
    # a padded budget resumed on other process counts with update_freq unchanged: the batch would change
    assert config_changes(stored, same, stored_world_size=2, world_size=4) == [
        "the batch of an update, max_tokens x update_freq x processes: 8 x 2 -> 8 x 4 processes (resume with "
        "trainer.update_freq=4)"]
    assert "resume on 3 process(es)" in config_changes(stored, same, stored_world_size=3, world_size=16)[0]
    # ... unless trainer.tokens_per_update holds the global batch (the loop re-splits it)
    tpu = {**same, "trainer": {**same["trainer"], "tokens_per_update": 4096}}
    assert config_changes({**stored, "trainer": {**stored["trainer"], "tokens_per_update": 4096}}, tpu,
                          stored_world_size=2, world_size=4) == []
