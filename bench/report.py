"""The one table every benchmark prints: scenario, figure, measured, goal, met.

Benchmarks assert nothing; they print what they measured next to the goal it is held
against, so a reader sees at a glance which goals hold on this machine. A figure
without a goal (a comparison, a floor) prints ``-`` in the goal and met columns.

Only the standard library is used: a bench must run with orchestrify's runtime
dependencies alone.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TextIO

__all__ = ["Figure", "Report", "at_least", "at_most", "percentile"]


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``samples``; NaN for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


@dataclass(frozen=True)
class Goal:
    """A bound a figure is held against, e.g. ``≤ 100 ms``."""

    text: str
    check: Callable[[float], bool]


def at_most(bound: float, unit: str = "") -> Goal:
    return Goal(text=f"≤ {_number(bound)}{_unit(unit)}", check=lambda v: v <= bound)


def at_least(bound: float, unit: str = "") -> Goal:
    return Goal(text=f"≥ {_number(bound)}{_unit(unit)}", check=lambda v: v >= bound)


@dataclass(frozen=True)
class Figure:
    scenario: str
    figure: str
    value: float
    unit: str
    goal: str
    met: bool | None  # None: no goal for this figure

    @property
    def measured(self) -> str:
        return "n/a" if math.isnan(self.value) else f"{_number(self.value)}{_unit(self.unit)}"


class Report:
    """Collects figures as a bench measures them and prints them as one table."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.figures: list[Figure] = []

    def add(
        self,
        scenario: str,
        figure: str,
        value: float,
        unit: str = "",
        goal: Goal | None = None,
    ) -> Figure:
        met = None if goal is None or math.isnan(value) else goal.check(value)
        if goal is not None and math.isnan(value):
            met = False
        row = Figure(
            scenario=scenario,
            figure=figure,
            value=value,
            unit=unit,
            goal=goal.text if goal else "-",
            met=met,
        )
        self.figures.append(row)
        return row

    @property
    def all_met(self) -> bool:
        return all(f.met is not False for f in self.figures)

    def table(self) -> str:
        head = ("scenario", "figure", "measured", "goal", "met")
        rows = [(f.scenario, f.figure, f.measured, f.goal, _met(f.met)) for f in self.figures]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

        out = [self.title, line(head), line(["-" * w for w in widths])]
        out.extend(line(r) for r in rows)
        return "\n".join(out)

    def print(self, *, json_out: bool = False, file: TextIO | None = None) -> None:
        """The table, or with ``json_out`` one JSON object per figure (for scripts)."""
        stream = file or sys.stdout
        if json_out:
            for f in self.figures:
                print(json.dumps({**asdict(f), "measured": f.measured}), file=stream)
        else:
            print(self.table(), file=stream)
        stream.flush()


def _met(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "NO")


def _unit(unit: str) -> str:
    return "" if not unit else (unit if unit in ("%", "/s", "x") else f" {unit}")


def _number(value: float) -> str:
    if float(value).is_integer():  # counts (0 failed, 3 replaced) print as counts
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
