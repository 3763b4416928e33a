"""The ``string_match_all`` metric (the script ``string_match_all.py`` is what ``evaluate.load`` reads)."""

from .string_match_all import StringMatchAll

__all__ = ["StringMatchAll"]
