#!/usr/bin/env python
"""Rebuild results/<scale>/ from run directories: table2.{md,csv} (the paper's Table 2 cell by cell, seeds
aggregated, the paper's BLEU beside ours, the pre-norm twin beside it at the cpu scale), table3.{md,csv} (the
paper's Table 3), runs.{md,csv} (every run), and the plots.

    python scripts/make_report.py --scale cpu                       # reads results/cpu/runs (the committed runs)
    python scripts/make_report.py --runs runs/cpu --out /tmp/table  # any folder of run directories
    python scripts/make_report.py --runs R --out O -- trainer.max_update=6   # a sweep's own overrides

Only runs that are their cell are tabulated: a run whose config differs from its cell's canonical config on a
result-changing key (report/cells.py; with the overrides after `--`, a sweep's own), or whose data artifact or
commit differs from the rest of the table, is left out and listed at the end with the reason.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import subprocess
import sys
from pathlib import Path

from adafactor_repro.files import atomic_write_text
from adafactor_repro.machine import git_commit, machine_header
from adafactor_repro.report import build_rows, find_runs, table2, table3, write_table
from adafactor_repro.report.cells import mismatch, provenance
from adafactor_repro.report.plots import plot_figure1, plot_optimizer_memory, plot_valid_loss

ROOT = Path(__file__).resolve().parents[1]


def rel(p: str | Path) -> str:
    """A path as the report prints it: relative to the repository when inside it (never this machine's
    absolute checkout path, which would differ on every clone)."""
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except (ValueError, OSError):
        return str(p)


def command_line(argv: list[str]) -> str:
    """The command that made the report, its path arguments repository-relative."""
    args = [rel(a) if a.startswith("/") else a for a in argv]
    return " ".join(shlex.quote(a) for a in ["python", "scripts/make_report.py", *args])


def uncommitted(runs: list, runs_root: Path) -> str:
    """The commit stamp names HEAD; say so when some of the tabulated runs are not in it yet (a sweep tabulates
    before its runs are committed), so the stamp never vouches for files it does not hold."""
    try:  # ls-files prints paths relative to its working directory: "<run>/summary.json"
        out = subprocess.run(["git", "ls-files", "--others", "--modified", "--exclude-standard", "--", "."],
                             cwd=runs_root, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""  # not a git checkout: the stamp says "unknown" already
    changed = {line.split("/", 1)[0] for line in out.splitlines()}
    dirty = [r for r in runs if r.path.name in changed]
    return f" + {len(dirty)} of these run directories not committed yet" if dirty else ""


def screen(runs: list, overrides: tuple[str, ...], check_cells: bool,
           expect: dict | None = None) -> tuple[list, dict[str, str], dict]:
    """(runs to tabulate, {left-out run: reason}, provenance of the kept runs; `expect`: another table's)."""
    left = {}
    if check_cells:
        for r in runs:
            bad = mismatch(r, ROOT, overrides=overrides)
            if bad:
                left[r.path.name] = "not its cell: " + "; ".join(bad)
    prov = provenance([r for r in runs if r.path.name not in left], expect)
    left.update(prov["odd"])
    return [r for r in runs if r.path.name not in left], left, prov


def provenance_line(prov: dict, kept: int, left: dict) -> str:
    key, sha = prov["artifact"]
    return (f"- runs: {kept} tabulated, trained at commit {str(prov['commit'])[:12]} on data artifact {key} "
            f"(spm.model sha256 {str(sha)[:12]}); " + (f"{len(left)} left out, listed at the end" if left
                                                         else "none left out"))


def left_out_section(left: dict) -> str:
    if not left:
        return ""
    return ("\n## Runs left out (not their cell, or of another data artifact or commit than the table)\n\n"
            + "".join(f"- `{name}`: {why}\n" for name, why in sorted(left.items())))


def twin_section(twin_root: Path, overrides: tuple[str, ...], check_cells: bool, expect: dict) -> str:
    """The pre-norm twin's Table 2 (scale=cpu_prenorm), reported beside the post-norm table: only its runs of the
    main table's data artifact and commit."""
    runs = find_runs(twin_root)
    if not runs:
        return ""
    kept, left, prov = screen(runs, overrides, check_cells, expect)
    if not kept:
        return ("\n## The pre-norm twin (`scale=cpu_prenorm`)\n\n"
                f"- no run of this table's data artifact and commit yet in `{rel(twin_root)}`\n"
                + left_out_section(left).replace("## ", "### "))
    s = table2.summarize(kept)
    ag, la = s["agreement"], table2.agreement(s["rows"], "loss_agrees")
    return ("\n## The pre-norm twin (`scale=cpu_prenorm`: the paper's own pre-norm layout, all else equal)\n\n"
            + provenance_line(prov, len(kept), left) + f" (`{rel(twin_root)}`)\n"
            + f"- Twin agreement with the paper's collapse/train verdict: BLEU no-warmup {ag['no_warmup'][0]}/"
            f"{ag['no_warmup'][1]}, all {ag['all'][0]}/{ag['all'][1]}; loss verdict no-warmup {la['no_warmup'][0]}/"
            f"{la['no_warmup'][1]}, all {la['all'][0]}/{la['all'][1]}.\n\n"
            + table2.to_wide_markdown(s["rows"]) + left_out_section(left).replace("## ", "### "))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: tuple[str, ...] = ()
    if "--" in argv:
        i = argv.index("--")
        argv, overrides = argv[:i], tuple(argv[i + 1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="cpu", help="scale name: reads results/<scale>/runs, writes results/<scale>")
    ap.add_argument("--runs", type=Path, help="run directories root (default results/<scale>/runs)")
    ap.add_argument("--out", type=Path, help="output folder (default results/<scale>)")
    ap.add_argument("--note", default="", help="a line added to the header, e.g. 'partial: ...'")
    ap.add_argument("--twin", type=Path, help="run directories of the pre-norm twin, reported beside Table 2 "
                                               "(default at the cpu scale: results/cpu_prenorm/runs when present)")
    ap.add_argument("--no-cell-check", action="store_true",
                    help="tabulate every run directory, whether or not it is its cell (ad-hoc folders of runs)")
    args = ap.parse_args(argv)
    out = args.out or ROOT / "results" / args.scale
    runs_root = args.runs or out / "runs"

    found = find_runs(runs_root)
    if not found:
        print(f"no run directories under {runs_root}: run `make reproduce SCALE={args.scale}` first",
              file=sys.stderr)
        return 1
    runs, left, prov = screen(found, overrides, not args.no_cell_check)
    for name, why in sorted(left.items()):
        print(f"make_report: left out {name}: {why}", file=sys.stderr)
    if not runs:
        print(f"make_report: every run under {rel(runs_root)} was left out (above); nothing to tabulate",
              file=sys.stderr)
        return 1
    devices = sorted({str(r.summary.get("device")) for r in runs if r.summary.get("device")})
    where = rel(runs_root)
    common = [
        f"- command: `{command_line([*argv, *(['--', *overrides] if overrides else [])])}` over {len(found)} run "
        f"directories in `{where}`",
        provenance_line(prov, len(runs), left),
        f"- commit: {git_commit(short=True) or 'unknown'}{uncommitted(runs, runs_root)};"
        f" tabulated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine_header()}" + (f"; runs on: {', '.join(devices)}" if devices else ""),
        *([f"- note: {args.note}"] if args.note else []),
    ]
    t2_runs = [r for r in runs if r.config.get("paper_row")]
    summary = table2.summarize(t2_runs)
    split = summary["split"]
    stems = {(r.config.get("data") or {}).get("splits", {}).get(split) for r in runs} - {None}
    t2_header = "\n".join([
        f"# The paper's Table 2, `{args.scale}` scale: every cell, the paper's BLEU beside ours",
        "",
        "- paper: Shazeer & Stern, arXiv:1804.04235v1, Table 2 (BLEU on newstest2013, WMT14 En-De, Transformer,"
        " 100k steps); our BLEU: sacreBLEU on the detokenized output of "
        f"`{split}` ({', '.join(sorted(stems)) or split}), beam and length penalty of configs/eval, signature in"
        " each run's bleu.json. The two BLEU columns are on different corpora and model sizes: compare verdicts"
        " (collapsed / trains), not numbers.",
        "- bleu_mean, bleu_sd over seeds (`seeds_bleu` lists them); opt_state_B_per_param: optimizer state bytes"
        " per model parameter (exact); distinct_hyps_mean: the fraction of distinct lines among a run's"
        " hypotheses (a diagnostic, not a verdict: ~1 translating, a few % when the model writes one sentence"
        " for every source, 0.001 when every line is empty).",
        "- step, paper: the paper's step at d_model 512; step, ours (`step_run`): the step these runs took, from"
        " their resolved config (optim.lr x rsqrt(schedule.d_model) x s_t: the experiments write an absolute"
        " step as k x sqrt(512), so a narrower model takes a larger multiple of s_t, e.g. 0.2 s_t at d_model"
        " 128; the relative step rho_t has no width factor).",
        *common,
    ])
    wide = ("## Side by side (the paper's layout; **≠**: our collapse/train verdict differs from the paper's)\n\n"
            + table2.to_wide_markdown(summary["rows"]))
    twin_root = args.twin or (ROOT / "results" / "cpu_prenorm" / "runs" if args.scale == "cpu" else None)
    twin = twin_section(twin_root, overrides, not args.no_cell_check, prov) if twin_root else ""
    atomic_write_text(out / "table2.md", t2_header + "\n\n" + wide + "\n## Every cell\n\n"
                      + table2.to_markdown(summary["rows"], summary["cells"]) + twin + left_out_section(left))
    atomic_write_text(out / "table2.csv", table2.to_csv(summary["rows"]))
    made = [out / "table2.md", out / "table2.csv"]
    t3_rows = table3.cell_rows(runs, split)
    if t3_rows:
        t3_header = "\n".join([
            f"# The paper's Table 3, `{args.scale}` scale: relative step sizes against differently-scaled embeddings",
            "",
            "- paper: Shazeer & Stern, arXiv:1804.04235v1, Table 3 (Section 8.1; 50k steps of 16,384 tokens, a "
            "softmax untied from the embeddings). Adam: Vaswani et al.'s settings and schedule; Adafactor: Algorithm "
            "6's. Our BLEU: sacreBLEU on the detokenized output of "
            f"`{split}` ({', '.join(sorted(stems)) or split}); the cpu scale's schedule map is declared in "
            "docs/cpu_scale.md. Compare the drops from the `scaled` scheme, not the numbers.",
            *common,
        ])
        atomic_write_text(out / "table3.md", t3_header + "\n\n" + table3.to_markdown(t3_rows))
        atomic_write_text(out / "table3.csv", table3.to_csv(t3_rows))
        made += [out / "table3.md", out / "table3.csv"]
    runs_header = "\n".join([
        f"# Every run, `{args.scale}` scale (one row per run directory, seeds apart)",
        "",
        "- BLEU: sacreBLEU on the detokenized output (signature in each run's bleu.json); `tok. BLEU` is the"
        " tokenized, compound-split score (tensor2tensor/fairseq style), labelled separately.",
        "- opt. state: bytes held in optimizer state (exact); B/param divides by the model's parameter count.",
        *common,
    ])
    md, cs = write_table(build_rows(runs), out, runs_header, stem="runs")
    made += [md, cs]
    for fn, name, which in ((plot_valid_loss, "valid_loss.png", t2_runs or runs),
                            (plot_figure1, "figure1_rms_update.png", t2_runs or runs),
                            (plot_optimizer_memory, "optimizer_memory.png", runs)):
        p = fn(which, out / name)
        if p is not None:
            made.append(p)
        else:
            print(f"skipped {name}: the runs log nothing to plot for it", file=sys.stderr)
    for p in made:
        print(rel(p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
