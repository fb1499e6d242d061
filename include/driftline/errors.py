"""The one error type driftline raises for bad input, so callers can show it as one line."""

from __future__ import annotations


class DriftlineError(ValueError):
    """Bad input or state, described for a human: what, which value, where it came from."""
