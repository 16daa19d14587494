"""Shared test helpers.

Tests that need something installable (Debian's chromium, the ../shared data) skip with a
reason on a developer's machine, but fail under CI (CI=true), where .ci/run installs them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI installs this, so the test must run there")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def wikitext_dir() -> Path:
    """../shared/data/wikitext-2 (tokenized v1 valid and test splits)."""
    path = SHARED / "data" / "wikitext-2"
    if not (path / "test.txt").is_file():
        skip_or_fail(f"WikiText-2 not found at {path}")
    return path
