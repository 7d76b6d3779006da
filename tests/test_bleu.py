"""BLEU: sacreBLEU equals its command line, and the legacy tokenized compound-split BLEU by hand."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from adafactor_repro.evaluate import bleu

REFS = [
    "Gutach: Noch mehr Sicherheit für Fußgänger",
    "Sie stehen keine 100 Meter voneinander entfernt: Am Dienstag ist in Gutach die neue B 33-Fußgängerampel "
    "am Dorfparkplatz in Betrieb genommen worden.",
    "Die E-Mail-Adresse wurde am 3. Juni geändert.",
    "„Das ist's“, sagte er – und ging.",
    "Zwei Anlagen so nah beieinander: Absicht oder Schildbürgerstreich?",
]
HYPS = [
    "Gutach: Mehr Sicherheit für Fußgänger",
    "Sie sind nicht 100 Meter voneinander entfernt: Am Dienstag wurde in Gutach die neue Fußgängerampel B 33 "
    "am Dorfparkplatz in Betrieb genommen.",
    "Die E-Mail Adresse wurde am 3. Juni geändert.",
    "\"Das ist es\", sagte er - und ging.",
    "Zwei Systeme so nah beieinander: Absicht oder Dummheit?",
]


def sacrebleu_cli(ref: Path, hyp: Path) -> list[dict]:
    exe = Path(sys.executable).with_name("sacrebleu")  # the venv's command line
    if not exe.is_file():
        pytest.skip(f"no sacrebleu command beside {sys.executable}")
    out = subprocess.run([str(exe), str(ref), "-i", str(hyp), "-m", "bleu", "chrf", "-w", "6"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def write(path: Path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def check_against_cli(tmp_path, hyps, refs):
    res = bleu.score(hyps, refs)
    cli_bleu, cli_chrf = sacrebleu_cli(write(tmp_path / "ref.de", refs), write(tmp_path / "hyp.de", hyps))
    assert res["bleu"] == pytest.approx(cli_bleu["score"], abs=1e-6)
    assert res["bleu_signature"] == cli_bleu["signature"]
    assert res["chrf"] == pytest.approx(cli_chrf["score"], abs=1e-6)
    assert res["chrf_signature"] == cli_chrf["signature"]
    return res


def test_bleu_equals_sacrebleu_command_line(tmp_path):
    res = check_against_cli(tmp_path, HYPS, REFS)
    assert 10 < res["bleu"] < 90 and res["n_segments"] == len(REFS)
    assert "tok:13a" in res["bleu_signature"] and res["bleu_verbose"].startswith("BLEU = ")


def test_bleu_equals_cli_on_newstest2014_prefix(tmp_path, shared_data):
    refs = (shared_data / "wmt14-en-de" / "newstest2014.de").read_text(encoding="utf-8").split("\n")[:300]
    # a deterministic "system": drop every third word of every second line
    hyps = [" ".join(w for j, w in enumerate(r.split()) if i % 2 or j % 3 != 2) for i, r in enumerate(refs)]
    res = check_against_cli(tmp_path, hyps, refs)
    assert 40 < res["bleu"] < 95


def test_compound_split_tokenization_matches_the_perl_pipeline():
    # tokenizer.perl -l de: escaping on, hyphenated words kept whole; then s{(\S)-(\S)}{$1 ##AT##-##AT## $2}g
    assert bleu.compound_split_tokenize("Die E-Mail-Adresse ist neu") == \
        "Die E ##AT##-##AT## Mail ##AT##-##AT## Adresse ist neu"
    # non-overlapping matches, as Perl's /g: the "2" is consumed by the first match, so "2-3" stays
    assert bleu.compound_split_tokenize('Er sagte: "1-2-3" & mehr.') == \
        "Er sagte : &quot; 1 ##AT##-##AT## 2-3 &quot; &amp; mehr ."


def test_compound_split_bleu_by_hand():
    hyp, ref = ["Die E-Mail Adresse ist neu"], ["Die E-Mail-Adresse ist neu"]
    # hyp: Die E @ Mail Adresse ist neu (7), ref: Die E @ Mail @ Adresse ist neu (8), @ = ##AT##-##AT##
    # matches: 1-grams 7/7, 2-grams 5/6, 3-grams 3/5, 4-grams 1/4; brevity penalty exp(1 - 8/7)
    expected = 100 * math.exp(1 - 8 / 7) * (1 * 5 / 6 * 3 / 5 * 1 / 4) ** 0.25
    res = bleu.score(hyp, ref)
    assert res["tok_bleu_compound_split"] == pytest.approx(expected, abs=1e-9)
    assert res["bleu"] != pytest.approx(expected, abs=0.1)  # a different number from sacreBLEU's
    assert "##AT##" in res["tok_bleu_method"]


def test_bad_input_errors():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        bleu.score(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="single-line"):
        bleu.score(["a\nb"], ["a"])
    with pytest.raises(ValueError, match="no segments"):
        bleu.score([], [])
