"""The README's Results section quotes the committed cpu table; these checks keep it from going stale.

The table file (results/cpu/table2.md) is rebuilt by `make tabulate` from the committed run directories; the README
is written by hand. After a sweep adds seeds, every figure the README quotes from the table must be the table's.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TABLE = ROOT / "results" / "cpu" / "table2.md"

pytestmark = pytest.mark.skipif(not TABLE.exists(), reason="no committed cpu table")


def results_section() -> str:
    text = README.read_text()
    start = text.index("## Results")
    return text[start:text.index("\n## ", start + 1)]


def side_by_side(text: str) -> list[str]:
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("| row | factored"))
    out = []
    for line in lines[i:]:
        if not line.startswith("|"):
            break
        out.append(line)
    return out


def test_readme_table_is_the_committed_table():
    assert side_by_side(results_section()) == side_by_side(TABLE.read_text()), (
        "README.md's Results table differs from results/cpu/table2.md: copy the '| row | factored' block over")


def test_readme_mean_sd_figures_are_in_the_table():
    table = TABLE.read_text()
    # "mean ± sd" of a cell with seeds, "mean (n=1)" of a cell with one so far
    quoted = re.findall(r"\d+\.\d\d ± \d+\.\d\d|\d+\.\d\d \(n=\d+\)", results_section())
    assert len(quoted) > 10  # the section quotes the table; if this fails the pattern no longer matches it
    stale = [q for q in quoted if q not in table]
    assert not stale, f"README.md quotes figures not in results/cpu/table2.md (stale after new seeds?): {stale}"


def test_readme_agreement_and_run_count_match():
    section = results_section()
    table = TABLE.read_text()
    ours = re.search(r"no-warmup cells (\d+)/(\d+); all cells (\d+)/(\d+)", table)
    assert ours, "table2.md no longer states its agreement counts"
    readme = re.search(r"no-warmup cells (\d+)/(\d+), all cells (\d+)/(\d+)", section)
    assert readme and readme.groups() == ours.groups(), "README.md's agreement counts differ from table2.md's"
    line = re.search(r"best warmup cell of the same table \(ours: (\d+\.\d+)", table)
    assert line and f"(ours: {line.group(1)};" in section, "README.md's collapse line differs from table2.md's"
    # the table's own count: runs are committed before they are tabulated, so the directory may hold more
    runs = int(re.search(r"over (\d+) run directories", table).group(1))
    stated = re.search(r"(\d+) of the table's (\d+) runs", section)
    total = int(stated.group(2)) if stated else None
    # the README counts the tabulated runs ("N of the table's M runs") until the whole sweep is in
    assert stated or runs >= 132, f"table2.md counts {runs} runs but README.md has no 'N of the table's M runs'"
    if stated:
        assert int(stated.group(1)) == runs and runs < total, (
            f"README.md says {stated.group(1)} of {total} runs; results/cpu/table2.md tabulates {runs}")


TABLE3 = ROOT / "results" / "cpu" / "table3.md"


@pytest.mark.skipif(not TABLE3.exists(), reason="no committed cpu Table 3")
def test_readme_table3_is_the_committed_table3():
    def block(text: str) -> list[str]:  # the contiguous table from its header line
        lines = text.splitlines()
        i = next(k for k, line in enumerate(lines) if line.startswith("| scheme | init_sigma"))
        out = []
        for line in lines[i:]:
            if not line.startswith("|"):
                break
            out.append(line)
        return out

    assert block(results_section()) == block(TABLE3.read_text()), (
        "README.md's Table 3 differs from results/cpu/table3.md: copy the '| scheme | init_sigma' block over")
    claim = re.search(r"\*\*The paper's claim.*?: (`unit`: \w+; `small`: \w+)", TABLE3.read_text())
    assert claim and claim.group(1) in results_section(), "README.md's Table 3 claim line differs from table3.md's"
