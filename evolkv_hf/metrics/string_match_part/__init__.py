"""The ``string_match_part`` metric (the script ``string_match_part.py`` is what ``evaluate.load`` reads)."""

from .string_match_part import StringMatchPart

__all__ = ["StringMatchPart"]
