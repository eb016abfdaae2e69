"""Shared test set-up: make `tiny_models` importable from every test folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402

from tiny_models import FAMILIES, build_model  # noqa: E402


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    """Each supported model family in turn."""
    return request.param


@pytest.fixture(scope="module")
def model(family):
    """The tiny random-weight model of ``family`` (sdpa)."""
    return build_model(family)
