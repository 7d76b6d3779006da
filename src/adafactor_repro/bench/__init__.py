"""Measurement helpers shared by the benchmark scripts and the GPU check (scripts/bench_*.py, scripts/gpu_check.py)."""
