"""The ``exact_match`` metric (the script ``exact_match.py`` is what ``evaluate.load`` reads)."""

from .exact_match import ExactMatch

__all__ = ["ExactMatch"]
