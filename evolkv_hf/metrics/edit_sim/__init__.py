"""The ``edit_sim`` metric (the script ``edit_sim.py`` is what ``evaluate.load`` reads)."""

from .edit_sim import EditSim

__all__ = ["EditSim"]
