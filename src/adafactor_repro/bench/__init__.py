"""Benchmarks: the project measured against its peers, side by side in one run, ratios printed
(`make bench`). `data` (encode throughput, scaling, padding, memory), `train` (training and beam search
against Hugging Face's MarianMTModel, the loop's overhead), `optim` (optimizer step and state memory).
The scripts/bench_*.py entry points only call their `main`. `gpu_check` is `make gpu-check`; `syncs`
counts host-device synchronisations (its CPU tests and the GPU check).
"""
