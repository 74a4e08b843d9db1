"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.binaries import Binaries, BinaryError


@pytest.fixture(scope="module")
def helm() -> Path:
    """The helm 3 binary the chart is rendered with (built once, cached)."""
    try:
        return Binaries().ensure("helm")
    except BinaryError as error:
        pytest.fail(str(error), pytrace=False)
