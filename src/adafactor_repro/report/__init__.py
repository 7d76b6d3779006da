"""Tables and plots of the optimizer comparison. Reads run directories only (no model, no data)."""

from .runs import Run, find_runs, load_run
from .table import build_rows, describe_optimizer, write_table

__all__ = ["Run", "find_runs", "load_run", "build_rows", "describe_optimizer", "write_table"]
