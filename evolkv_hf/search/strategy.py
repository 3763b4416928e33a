"""The CMA-ES of one layer group, behind an ask/tell interface (pycma).

Budgets are searched in a ratio space around the target mean ``c``: a candidate ``x`` maps to
``clip(round(x * c), min_budget, max_budget)``. pycma samples from NumPy's global random generator, so
the strategy keeps its own generator state and swaps it in around each call: the search is deterministic
for a seed, resumes exactly from a checkpoint, and leaves the caller's NumPy random state untouched.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import cma
import numpy as np


def _global_randn(*shape: int) -> np.ndarray:
    """pycma's sampler. A module-level function pickles by reference, so a restored strategy samples from
    the generator state swapped in by ``_numpy_random_state`` (``np.random.randn`` itself would pickle a
    frozen copy of NumPy's global generator)."""
    return np.random.randn(*shape)


@contextmanager
def _numpy_random_state(state: dict[str, Any]) -> Iterator[None]:
    saved = np.random.get_state()
    np.random.set_state(state["value"])
    try:
        yield
    finally:
        state["value"] = np.random.get_state()
        np.random.set_state(saved)


class GroupStrategy:
    """CMA-ES over the budgets of one group of layers.

    Parameters
    ----------
    start:
        Starting budgets of the group's layers.
    target:
        Target mean budget ``c`` (the unit of the ratio space).
    sigma0:
        Initial step size in units of ``c``.
    min_budget, max_budget:
        Bounds of every budget.
    population_size:
        Candidates per generation.
    seed:
        Seed of this group's strategy (a positive integer).

    Example
    -------
    >>> strategy = GroupStrategy([128] * 8, 128, 0.3, 32, 512, 10, seed=1)
    >>> candidates = strategy.ask()  # ten lists of 8 integer budgets
    >>> strategy.tell([1.0] * 10)  # fitness values, larger is better
    """

    def __init__(
        self,
        start: Sequence[int],
        target: float,
        sigma0: float,
        min_budget: int,
        max_budget: int,
        population_size: int,
        seed: int,
    ) -> None:
        self.target, self.min_budget, self.max_budget = float(target), int(min_budget), int(max_budget)
        self._rng: dict[str, Any] = {"value": np.random.RandomState(seed).get_state()}
        lower, upper = self.min_budget / self.target, self.max_budget / self.target
        x0 = np.clip(np.asarray(start, dtype=float) / self.target, lower, upper)
        options = {
            "bounds": [lower, upper],
            "popsize": population_size,
            "seed": seed,
            "randn": _global_randn,
            "verbose": -9,
            "verb_log": 0,
            "verb_disp": 0,
        }
        with _numpy_random_state(self._rng):
            self.es = cma.CMAEvolutionStrategy(x0.tolist(), sigma0, options)
        self._asked: list[np.ndarray] | None = None

    def decode(self, x: Sequence[float]) -> list[int]:
        """Integer budgets of a point of the ratio space."""
        values = np.rint(np.asarray(x, dtype=float) * self.target)
        return [int(v) for v in np.clip(values, self.min_budget, self.max_budget)]

    def ask(self) -> list[list[int]]:
        """The next generation's candidates, as integer budgets of the group's layers."""
        with _numpy_random_state(self._rng):
            self._asked = self.es.ask()
        return [self.decode(list(x)) for x in self._asked]

    def tell(self, fitness: Sequence[float]) -> None:
        """Report the fitness (larger is better) of the last ``ask``'s candidates, in order."""
        if self._asked is None:
            raise RuntimeError("tell() must follow ask().")
        losses = [-float(f) for f in fitness]
        with _numpy_random_state(self._rng):
            self.es.tell(self._asked, losses)
        self._asked = None

    def state_bytes(self) -> bytes:
        """Pickled optimiser state: for local checkpoints only, never for the Hub."""
        return pickle.dumps(
            {
                "es": self.es,
                "rng": self._rng,
                "asked": self._asked,
                "bounds": (self.target, self.min_budget, self.max_budget),
            }
        )

    @classmethod
    def from_state_bytes(cls, data: bytes) -> GroupStrategy:
        """Restore a strategy saved by :meth:`state_bytes` (only from the user's own output_dir)."""
        state = pickle.loads(data)
        strategy = cls.__new__(cls)
        strategy.es, strategy._rng, strategy._asked = state["es"], state["rng"], state["asked"]
        strategy.target, strategy.min_budget, strategy.max_budget = state["bounds"]
        return strategy
