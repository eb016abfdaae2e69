"""Shared test set-up: make `tiny_models` importable from every test folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

from tiny_models import FAMILIES, build_model  # noqa: E402


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    """Each supported model family in turn."""
    return request.param


@pytest.fixture(scope="module")
def model(family):
    """The tiny random-weight model of ``family`` (sdpa)."""
    return build_model(family)


@pytest.fixture(autouse=True)
def _seeded_torch():
    """Every test starts from the same torch RNG state, so unseeded draws are reproducible."""
    torch.manual_seed(0)


# Hypothesis draws the same examples on every run and machine: a CI run cannot turn red by chance.
settings.register_profile("deterministic", derandomize=True, deadline=None)
settings.load_profile("deterministic")
