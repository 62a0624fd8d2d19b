"""Every line of tests/helpers/redact_corpus.py redacts exactly as listed; the counts in its
docstring."""

from __future__ import annotations

import pytest

from helpers.redact_corpus import CORPUS
from procmon.enrich.redact import REDACTED, Redactor


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor()


@pytest.mark.parametrize(("argv", "expected"), CORPUS, ids=lambda v: " ".join(v or ["-"])[:60])
def test_corpus_line(redactor: Redactor, argv: list[str], expected: list[str] | None) -> None:
    out, changed = redactor.redact(argv)
    assert out == (argv if expected is None else expected)
    assert changed == (expected is not None)


def test_corpus_counts(redactor: Redactor) -> None:
    secret = [(a, e) for a, e in CORPUS if e is not None]
    harmless = [a for a, e in CORPUS if e is None]
    caught = sum(redactor.redact(a)[0] == e for a, e in secret)
    altered = sum(redactor.redact(a)[0] != a for a in harmless)
    print(
        f"corpus {len(CORPUS)}: secret caught {caught}/{len(secret)}, harmless altered "
        f"{altered}/{len(harmless)}"
    )
    assert len(CORPUS) >= 150
    assert (len(CORPUS), len(secret), caught, altered) == (187, 133, 133, 0)
    assert all(REDACTED in " ".join(e) for _, e in secret)
