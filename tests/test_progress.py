"""What a run prints: `update=N/M` and an ETA off a terminal, a tqdm bar that keeps its width on one, the
decode's progress, the one summary line a run ends with, and the optimizer-state breakdown in wandb."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from adafactor_repro.train.evaluation import DecodeProgress
from adafactor_repro.train.metrics import MetricsLogger, fmt_duration, summary_line, wandb_record

TRAIN = {"split": "train", "epoch": 1, "loss": 4.1234, "nll": 3.9, "ppl": 49.4, "lr": 1e-3, "gnorm": 1.2,
         "tokens_per_s": 1663.0, "nonfinite": 0, "optimizer_state_bytes": 4096,
         "optimizer_state_breakdown": {"factored": 1024, "second_moment": 3072, "momentum": 0, "total": 4096}}


def test_train_lines_carry_update_of_total_and_an_eta(tmp_path, capsys):
    log = MetricsLogger(tmp_path, total_updates=1000, start_update=300)
    log._t0 -= 70.0  # 70 s for the 40 updates since the (resumed) start: 1.75 s an update
    log.log({**TRAIN, "update": 340})
    log.log({"split": "valid", "update": 340, "loss": 4.0})
    log.close()
    train, valid = capsys.readouterr().out.splitlines()
    assert "update=340/1000" in train and "loss=4.123" in train
    eta = re.search(r"eta=(\S+)", train).group(1)
    assert eta == fmt_duration(660 * 1.75) == "19m15s"
    assert "update=340/1000" in valid and "eta=" not in valid


PTY = r"""
import fcntl, os, pty, struct, subprocess, sys, termios
m, s = pty.openpty()
fcntl.ioctl(s, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
p = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=s, stderr=s, close_fds=True)
os.close(s)
out = b""
while True:
    try:
        d = os.read(m, 4096)
    except OSError:
        break
    if not d:
        break
    out += d
p.wait()
sys.stdout.write(out.decode(errors="replace"))
"""

CHILD = r"""
import sys, tempfile
from adafactor_repro.train.metrics import MetricsLogger
rec = %r
log = MetricsLogger(tempfile.mkdtemp(), total_updates=4)
for u in range(1, 5):
    log.advance()
    log.log({**rec, "update": u})
log.close()
"""


def test_the_progress_bar_keeps_its_width_on_a_terminal():
    out = subprocess.run([sys.executable, "-c", PTY, CHILD % (TRAIN,)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "WANDB_MODE": "disabled"}).stdout
    last = [seg for seg in out.split("\r") if "4/4" in seg][-1]
    bar = re.search(r"\|(.*?)\|", last).group(1)
    assert len(bar) >= 30, f"the bar is squeezed to {len(bar)} characters: {last!r}"
    assert "loss=4.12" in last and "[train]" not in last  # a short postfix, not the whole log line


def test_wandb_gets_the_optimizer_state_breakdown_by_kind(tmp_path):
    rec = wandb_record({**TRAIN, "update": 10})
    assert rec["train/optimizer_state_bytes"] == 4096
    assert rec["train/optimizer_state_breakdown/second_moment"] == 3072
    assert rec["train/optimizer_state_breakdown/factored"] == 1024
    assert "train/update" not in rec

    class FakeWandb:
        logged: list = []

        def log(self, d, step):
            self.logged.append((step, d))

        def finish(self):
            pass

    log = MetricsLogger(tmp_path, total_updates=10)
    log.wandb = FakeWandb()
    log.log({**TRAIN, "update": 10})
    step, d = FakeWandb.logged[-1]
    assert step == 10 and d["train/optimizer_state_breakdown/momentum"] == 0
    log.close()


def test_a_run_ends_with_one_summary_line():
    s = {"status": "completed", "updates": 1000, "wall_time_s": 398.1, "optimizer_state_bytes": 9650176,
         "optimizer_state_breakdown": {"factored": 0, "second_moment": 9650176, "momentum": 0, "total": 9650176},
         "bleu": {"test": 21.3203}, "valid_loss": 3.8086}
    line = summary_line(s, "runs/cpu/table2_A-warmup-s1")
    assert "\n" not in line
    assert line == ("runs/cpu/table2_A-warmup-s1: run completed; 1000 updates; wall 6m38s; optimizer state 9.2 MiB "
                    "(second_moment 9.2 MiB); BLEU test 21.32; valid loss 3.809")
    assert summary_line({"status": "diverged", "diverged_at": 12, "updates": 11}).startswith(
        "run diverged at update 12; 11 updates; wall ?; optimizer state ?; BLEU -")


def test_the_decode_reports_its_progress(monkeypatch):
    said: list[str] = []
    monkeypatch.setattr(DecodeProgress, "EVERY_S", 0.0)
    p = DecodeProgress("test", 100, said.append)
    for done in (40, 80, 100):
        p(done)
    assert said[0] == "[decode] test: 100 sentences ..."
    assert [s.split(",")[0] for s in said[1:]] == ["[decode] test: 40/100 sentences", "[decode] test: 80/100 sentences"]
    assert all("left" in s for s in said[1:])
    quiet = DecodeProgress("test", 100, None)
    quiet(50)  # no say: silent
