"""Reference PyTorch reproduction of Adafactor (Shazeer & Stern, ICML 2018) on WMT14 En-De.

Subpackages, one concern each; data flows config -> data -> model + optimizer -> loop -> checkpoints and
metrics -> evaluation -> tables:

- ``optim``    Adafactor, learning-rate schedules, optimizer-state accounting. Imports nothing else from
               this package, so it can be copied into any project.
- ``data``     corpora (hub or local files) -> cleaning -> joint sentencepiece -> binarized splits ->
               token-budget batches. Knows no model.
- ``model``    the Transformer of Vaswani et al. in one file. Knows no corpus and no loop.
- ``train``    ties model, optimizer and data: the loop, checkpoints, distributed, metrics.
- ``evaluate`` beam search and BLEU; needs the model and the tokenizer.
- ``report``   tables and plots; reads run directories only.
"""

__version__ = "0.1.0"
