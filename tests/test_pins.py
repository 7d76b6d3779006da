"""One triton, the one torch wants: the Makefile's torch pin, the pyproject `triton` extra and the record of what
that torch's CUDA wheel requires (requirements/torch-triton.txt, read from the wheel's METADATA) must agree, so
that `pip install -e .[dev]` beside torch's CUDA build resolves, and the suite tests the triton GPU users get."""

from __future__ import annotations

import re

import pytest


def pins(root) -> dict:
    make = (root / "Makefile").read_text()
    torch = re.search(r"^TORCH\s*\?=\s*torch==(\S+)", make, re.M).group(1)
    extra = re.search(r"^triton\s*=\s*\[\"triton==([^;\"]+)", (root / "pyproject.toml").read_text(), re.M).group(1)
    record = {}
    for line in (root / "requirements" / "torch-triton.txt").read_text().splitlines():
        m = re.match(r"torch==(\S+)\s+triton==(\S+)\s*$", line)
        if m:
            record[m.group(1)] = m.group(2)
    return dict(torch=torch, extra=extra.strip(), record=record)


def test_triton_extra_is_what_the_pinned_torch_requires(repo_root):
    p = pins(repo_root)
    assert p["torch"] in p["record"], (f"Makefile pins torch=={p['torch']}, which requirements/torch-triton.txt "
                                       "does not record: read its CUDA wheel's Requires-Dist (see that file)")
    assert p["extra"] == p["record"][p["torch"]], (f"pyproject's triton extra pins {p['extra']}; torch=={p['torch']}'s "
                                                   f"CUDA wheel requires triton=={p['record'][p['torch']]}")


def test_installed_triton_is_the_pinned_one(repo_root):
    triton = pytest.importorskip("triton")
    assert triton.__version__ == pins(repo_root)["extra"], "reinstall: pip install -e '.[dev]'"
