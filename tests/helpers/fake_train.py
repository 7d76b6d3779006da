"""Stands in for scripts/train.py in the sweep tests (reproduce.py --train-cmd): takes the same key=value
arguments, writes the files a run writes (summary.json, metrics.jsonl, config.yaml, bleu.json) and, like the
real loop, stops cleanly on SIGTERM/SIGINT: summary "running" at the update reached, exit status 4.

FAKE_TRAIN_SECONDS (default 0.3): how long a run takes; FAKE_TRAIN_UPDATES (default 10)."""

import json
import os
import signal
import sys
import time
from pathlib import Path

args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
run_dir = Path(args["run_dir"])
run_dir.mkdir(parents=True, exist_ok=True)
total = int(os.environ.get("FAKE_TRAIN_UPDATES", "10"))
seconds = float(os.environ.get("FAKE_TRAIN_SECONDS", "0.3"))
(run_dir / "pid").write_text(str(os.getpid()))
(run_dir / "config.yaml").write_text(f"trainer:\n  max_update: {total}\n  seed: {args.get('trainer.seed', 1)}\n")
stopped = []


def on_signal(signum, frame):
    stopped.append(signum)


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)


def summary(status, updates):
    (run_dir / "summary.json").write_text(json.dumps({
        "status": status, "updates": updates, "wall_time_s": seconds, "name": args.get("experiments"),
        "schedule": args.get("schedule"), "bleu": {"test": 1.0} if status == "completed" else None}))


with open(run_dir / "metrics.jsonl", "a") as metrics:
    for u in range(1, total + 1):
        if stopped:
            summary("running", u - 1)
            (run_dir / "stopped_by").write_text(str(stopped[0]))
            print(f"fake_train: interrupted at update {u - 1}", flush=True)
            sys.exit(4)
        time.sleep(seconds / total)
        metrics.write(json.dumps({"split": "train", "update": u, "loss": 5.0 - u / total, "lr": 1e-3,
                                  "time": time.time()}) + "\n")
        metrics.flush()
        summary("running", u)
(run_dir / "bleu.json").write_text(json.dumps({"test": {"bleu": 1.0, "decode_seconds": 0.0}}))
summary("completed", total)
print("fake_train: completed", flush=True)
