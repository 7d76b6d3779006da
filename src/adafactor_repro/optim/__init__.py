"""Optimizers: Adafactor (Shazeer & Stern 2018) with every switch of the paper, its LR schedules, and
state accounting for any torch optimizer. Imports nothing else from adafactor_repro, so it can be lifted."""

from . import schedules
from .adafactor import Adafactor, stochastic_round_to_bf16
from .state import optimizer_state_breakdown, optimizer_state_bytes

__all__ = ["Adafactor", "optimizer_state_breakdown", "optimizer_state_bytes", "schedules",
           "stochastic_round_to_bf16"]  # fmt: skip
