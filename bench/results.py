"""Measured cases and their medians."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Case:
    """One configuration of one workload against one server, with its runs."""

    group: str
    """``ceiling``, ``A``, ``B``, ``C``, ``D``, ``M``, ``R``, ``py-B`` or ``py-D``."""
    target: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    discarded: int = 0
    """Runs thrown away because other processes used the CPU during them."""

    @property
    def key(self) -> str:
        """A stable identifier: target, group and parameters."""
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.target}:{self.group}:{extra}"

    def median(self, name: str = "rate") -> float | None:
        """The median of ``name`` over the successful runs (None if there is none)."""
        values = [float(r[name]) for r in self.runs if r.get(name) is not None]
        return statistics.median(values) if values else None

    def spread(self, name: str = "rate") -> tuple[float, float] | None:
        """(min, max) of ``name`` over the runs."""
        values = [float(r[name]) for r in self.runs if r.get(name) is not None]
        return (min(values), max(values)) if values else None

    def to_json(self) -> dict[str, Any]:
        """Plain data for the raw results file."""
        return asdict(self)


VARIANT_PARAMS = ("deflate",)
"""Parameters that make a case a variant: a lookup that does not name one finds
only cases without it (``find(key, "B", size=64)`` is never a deflate case)."""


class Results:
    """All cases of one benchmark session, looked up by target/group/params."""

    def __init__(self) -> None:
        self.cases: list[Case] = []

    def add(self, case: Case) -> Case:
        """Record ``case`` and return it."""
        self.cases.append(case)
        return case

    def find(self, target: str, group: str, /, **params: Any) -> Case | None:
        """The case with exactly these parameters (those given must match)."""
        for case in self.cases:
            if case.target != target or case.group != group:
                continue
            if any(case.params.get(k) and k not in params for k in VARIANT_PARAMS):
                continue
            if all(case.params.get(k) == v for k, v in params.items()):
                return case
        return None

    def value(self, target: str, group: str, name: str = "rate", /, **params: Any) -> float | None:
        """Median of ``name`` for a case, or None if missing or failed."""
        case = self.find(target, group, **params)
        return case.median(name) if case is not None else None

    @property
    def failures(self) -> list[Case]:
        """Cases that did not run to completion."""
        return [c for c in self.cases if c.error is not None]
