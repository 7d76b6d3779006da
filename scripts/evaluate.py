"""BLEU of a run directory or a checkpoint: hypotheses files and bleu.json (sacreBLEU + signature, chrF,
tokenized compound-split BLEU). Arguments are key=value, like the other entry points:

    python scripts/evaluate.py run_dir=runs/cpu/afx_adam-warmup-s1                  # checkpoint_last.pt
    python scripts/evaluate.py run_dir=runs/cpu/afx_adam-warmup-s1 checkpoint=checkpoint_best.pt beam=1
    python scripts/evaluate.py checkpoint=/path/checkpoint_avg5.pt splits=[test] out_dir=/tmp/eval

Decoding settings default to the run's own `eval` config (beam 4, length penalty 0.6, max length
source + 50). Results of a checkpoint other than checkpoint_last.pt are stored under `<split>@<name>`
(e.g. `test@checkpoint_best`), so the end-of-training numbers are never overwritten silently.
The keys: adafactor_repro.train.evaluation.EvaluateArgs.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("ADAFACTOR_REPRO_ROOT", str(Path(__file__).resolve().parents[1]))


def main(argv: list[str]) -> dict:
    from adafactor_repro.train.errors import exit_on_user_error
    from adafactor_repro.train.evaluation import evaluate_checkpoint, parse_evaluate_args

    with exit_on_user_error("evaluate.py"):
        results, run = evaluate_checkpoint(parse_evaluate_args(argv))
    e = run["eval"]
    print(f"{run['checkpoint']} (update {run['update']}), beam {e.beam}, lenpen {e.lenpen} -> {run['out_dir'] / 'bleu.json'}")
    for key, r in results.items():
        print(f"  {key:24s} sacreBLEU {r['bleu']:6.2f}  chrF {r['chrf']:6.2f}  "
              f"tok+compound-split BLEU {r.get('tok_bleu_compound_split', float('nan')):6.2f}  "
              f"({r['sentences']} sentences, {r['sentences_per_s']:.1f}/s)")
    if results:
        print(f"  signature: {next(iter(results.values()))['bleu_signature']}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
