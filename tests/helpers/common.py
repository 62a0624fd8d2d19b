"""Requirements that fail loudly in CI and skip elsewhere, and the repository's root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parents[2]


def require(condition: bool, reason: str) -> None:
    """Skip with a reason outside CI; in CI a missing requirement is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)
