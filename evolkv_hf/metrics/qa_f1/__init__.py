"""The ``qa_f1`` metric (the script ``qa_f1.py`` is what ``evaluate.load`` reads)."""

from .qa_f1 import QaF1

__all__ = ["QaF1"]
