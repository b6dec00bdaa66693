"""Shared test set-up: guest assembly helpers live in guestlib.py beside this file."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


import pytest  # noqa: E402


@pytest.fixture
def recorder(exit_recorder):
    """Shorter name for hvsim's ``exit_recorder`` fixture."""
    return exit_recorder

from hypothesis import settings  # noqa: E402

# CI runs the same examples every time (a red CI must mean a regression); locally hypothesis
# keeps exploring.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
