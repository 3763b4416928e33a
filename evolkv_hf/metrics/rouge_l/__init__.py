"""The ``rouge_l`` metric (the script ``rouge_l.py`` is what ``evaluate.load`` reads)."""

from .rouge_l import RougeL

__all__ = ["RougeL"]
