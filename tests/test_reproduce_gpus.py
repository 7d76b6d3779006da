"""`make reproduce` on a multi-GPU node, on CPU: with a faked device count every job slot owns one GPU (its
own CUDA_VISIBLE_DEVICES), JOBS defaults to the GPU count, and SLURM gets one GPU per cell."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time

import pytest
import torch


@pytest.fixture
def reproduce(repo_root):
    spec = importlib.util.spec_from_file_location("reproduce_under_test", repo_root / "scripts" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # the fake cluster's runs write no config.yaml to compare with their cell (tests/test_reproduce.py does that)
    mod.not_the_cell = lambda *a: []
    return mod


class FakeProc:
    """A child process whose work runs in a thread; poll() is its exit status once done."""

    def __init__(self, work):
        self.rc = None
        threading.Thread(target=self._run, args=(work,), daemon=True).start()

    def _run(self, work):
        self.rc = work()

    def poll(self):
        return self.rc


class FakeCluster:
    """Stands in for the sweep's children: a training run holds its GPU for a moment and completes.
    `fake.start` replaces reproduce.start (the cells), `fake` itself subprocess.call (data, tables)."""

    def start(self, cmd, log, env_extra=None):
        return FakeProc(lambda: self(cmd, env=env_extra or {}))

    def __init__(self):
        self.lock = threading.Lock()
        self.busy: dict[str, str] = {}  # GPU -> run_dir of the run on it
        self.trained: list[tuple[str, str]] = []
        self.clash: list[str] = []
        self.max_concurrent = 0

    def __call__(self, cmd, cwd=None, env=None, stdout=None, stderr=None):
        if "scripts/train.py" not in cmd:
            return 0  # prepare_data, evaluate, tabulate
        gpu = (env or {}).get("CUDA_VISIBLE_DEVICES")
        run_dir = next(a.split("=", 1)[1] for a in cmd if a.startswith("run_dir="))
        key = gpu if gpu is not None else run_dir  # no GPU: nothing to share
        with self.lock:
            if key in self.busy:
                self.clash.append(f"{run_dir} on GPU {gpu} while {self.busy[key]} runs there")
            self.busy[key] = run_dir
            self.max_concurrent = max(self.max_concurrent, len(self.busy))
            self.trained.append((run_dir, gpu))
        time.sleep(0.2)
        from pathlib import Path

        d = Path(run_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "summary.json").write_text(json.dumps({"status": "completed"}))
        (d / "bleu.json").write_text("{}")
        with self.lock:
            del self.busy[key]
        return 0


def _fake_gpus(monkeypatch, n):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_one_cell_per_gpu_by_default(reproduce, monkeypatch, tmp_path):
    _fake_gpus(monkeypatch, 4)
    fake = FakeCluster()
    monkeypatch.setattr(reproduce.subprocess, "call", fake)
    monkeypatch.setattr(reproduce, "start", fake.start)
    rc = reproduce.main(["--scale", "gpu", "--sweep", "table2_core", "--seeds", "1", "--runs-dir",
                         str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")])
    assert rc == 0
    assert len(fake.trained) == 10 and not fake.clash
    assert fake.max_concurrent == 4  # JOBS defaulted to the 4 GPUs, all of them busy at once
    assert sorted({g for _, g in fake.trained}) == ["0", "1", "2", "3"]


def test_visible_devices_subset_and_more_jobs_than_gpus(reproduce, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa,GPU-bbbb")  # UUIDs are passed through as given
    assert reproduce.visible_gpus() == ["GPU-aaaa", "GPU-bbbb"]
    fake = FakeCluster()
    monkeypatch.setattr(reproduce.subprocess, "call", fake)
    monkeypatch.setattr(reproduce, "start", fake.start)
    rc = reproduce.main(["--scale", "gpu", "--experiments", "afx_adam,afx_adafactor", "--seeds", "1", "--runs-dir",
                         str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")])
    assert rc == 0 and fake.max_concurrent == 2 and not fake.clash
    assert "on GPU GPU-aaaa" in capsys.readouterr().out


def test_no_gpu_and_cpu_scale_leave_devices_alone(reproduce, monkeypatch, tmp_path):
    _fake_gpus(monkeypatch, 0)
    fake = FakeCluster()
    monkeypatch.setattr(reproduce.subprocess, "call", fake)
    monkeypatch.setattr(reproduce, "start", fake.start)
    assert reproduce.main(["--scale", "gpu", "--experiments", "afx_adam", "--seeds", "1", "--runs-dir",
                           str(tmp_path / "a"), "--results-dir", str(tmp_path / "r")]) == 0
    assert sorted(fake.trained) == [(str((tmp_path / "a" / "afx_adam-no_warmup-s1").resolve()), None),
                                    (str((tmp_path / "a" / "afx_adam-warmup-s1").resolve()), None)]
    _fake_gpus(monkeypatch, 8)
    fake = FakeCluster()
    monkeypatch.setattr(reproduce.subprocess, "call", fake)
    monkeypatch.setattr(reproduce, "start", fake.start)
    assert reproduce.main(["--scale", "cpu", "--experiments", "afx_adam", "--seeds", "1", "--jobs", "2", "--runs-dir",
                           str(tmp_path / "b"), "--results-dir", str(tmp_path / "r2")]) == 0
    assert {g for _, g in fake.trained} == {None}  # the cpu scale is not pinned to cards


def test_slurm_grid_asks_one_gpu_per_cell(reproduce, repo_root, capsys):
    assert reproduce.main(["--scale", "gpu", "--launcher", "slurm", "--dry-run"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "hydra/launcher=slurm" in x)
    assert "hydra.launcher.gpus_per_node=1" in line and "hydra.launcher.tasks_per_node=1" in line
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(repo_root / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["scale=gpu", "hydra/launcher=slurm"], return_hydra_config=True)
    assert (cfg.hydra.launcher.gpus_per_node, cfg.hydra.launcher.tasks_per_node) == (1, 1)


def test_launcher_overrides_reach_the_slurm_sweep_only(reproduce, capsys):
    # the README's `make reproduce SCALE=gpu LAUNCHER=slurm ARGS='-- hydra.launcher.partition=gpu'`: data
    # preparation and tabulation compose without the SLURM launcher, where Hydra refuses hydra.launcher.*
    assert reproduce.main(["--scale", "gpu", "--launcher", "slurm", "--dry-run", "--",
                           "hydra.launcher.partition=gpu", "trainer.max_update=5"]) == 0
    cmds = [x for x in capsys.readouterr().out.splitlines() if x.startswith("+ ")]
    sweep = [c for c in cmds if "hydra/launcher=slurm" in c]
    others = [c for c in cmds if c not in sweep]
    assert len(sweep) == 1 and "hydra.launcher.partition=gpu" in sweep[0] and "trainer.max_update=5" in sweep[0]
    assert others and all("hydra.launcher" not in c and "trainer.max_update=5" in c for c in others)
    with pytest.raises(SystemExit):  # without the SLURM launcher they would configure nothing: refused
        reproduce.main(["--scale", "gpu", "--dry-run", "--", "hydra.launcher.partition=gpu"])


def test_make_passes_no_jobs_at_gpu_scale(repo_root):
    import subprocess

    out = subprocess.run(["make", "-n", "reproduce", "SCALE=gpu", f"PY={sys.executable}", "-C", str(repo_root)],
                         capture_output=True, text=True).stdout
    assert "--scale gpu" in out and "--jobs" not in out
