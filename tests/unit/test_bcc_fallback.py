"""The bcc backend builds without the context programs when only they fail to compile."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from procmon.probe.bcc import compile_probe
from procmon.probe.knobs import ProbeKnobs

SOURCE = Path("/nonexistent/exit.bcc.c")  # the fake compiler never reads it


class FakeCompiler:
    """Stands in for bcc's compiler: fails when the context programs are compiled in."""

    def __init__(self, context_error: Exception | None, plain_error: Exception | None = None):
        self.context_error = context_error
        self.plain_error = plain_error
        self.builds: list[bool] = []

    def __call__(self, source: Path, flags: list[str]) -> Any:
        with_context = "-DPROCMON_CAPTURE_EXEC=1" in flags or "-DPROCMON_CAPTURE_KILLER=1" in flags
        self.builds.append(with_context)
        error = self.context_error if with_context else self.plain_error
        if error is not None:
            raise error
        return f"module(context={with_context})"


def test_context_that_compiles_is_kept() -> None:
    fake = FakeCompiler(context_error=None)
    assert compile_probe(SOURCE, ProbeKnobs(), False, fake) == ("module(context=True)", True)
    assert fake.builds == [True]


def test_context_that_fails_gives_exits_only_and_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeCompiler(context_error=RuntimeError("error: no member named 'id'\nmore"))
    with caplog.at_level(logging.WARNING, logger="procmon.probe"):
        module, has_context = compile_probe(SOURCE, ProbeKnobs(), False, fake)
    assert (module, has_context) == ("module(context=False)", False)
    assert fake.builds == [True, False]
    [record] = caplog.records
    assert "no member named 'id'" in record.getMessage()
    assert "\n" not in record.getMessage()


def test_failure_without_context_is_the_error() -> None:
    fake = FakeCompiler(RuntimeError("context broke"), RuntimeError("exit program broke"))
    with pytest.raises(RuntimeError, match="exit program broke"):
        compile_probe(SOURCE, ProbeKnobs(), False, fake)


@pytest.mark.parametrize("error", [FileNotFoundError("no headers"), PermissionError("EPERM")])
def test_missing_headers_or_permission_is_not_retried(error: OSError) -> None:
    fake = FakeCompiler(context_error=error)
    with pytest.raises(type(error)):
        compile_probe(SOURCE, ProbeKnobs(), False, fake)
    assert fake.builds == [True]


def test_context_off_compiles_once_without_it() -> None:
    fake = FakeCompiler(context_error=RuntimeError("never compiled"))
    knobs = ProbeKnobs(capture_exec=False, capture_args=False, capture_killer=False)
    assert compile_probe(SOURCE, knobs, False, fake) == ("module(context=False)", False)
    assert fake.builds == [False]
