"""``python -m bench.peers --rounds R``: R passes in one run, each target judged on its median.

One pass measures each server once, a minute or more apart; on a shared machine whose speed
drifts 2-3x over a day, one pass's ratios move with that drift (issue #25's six single
passes put 1 image x 32 at 0.47-0.79x of its ceiling). R passes, every other one in the
opposite order (so drift favours no server), give each ratio R same-pass values: the
median is the verdict, and how many passes met the target says how firm it is.

``passes[k]`` is one pass's results, as :mod:`bench.peers.table` reads them.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.peers import table


@dataclass(frozen=True)
class Across:
    """One ratio over the passes: its value in each (None where not measured)."""

    target: str
    api: str
    values: tuple[float | None, ...]
    bound: float | None = None  # None: reported, not a target
    lower_is_better: bool = False

    @property
    def median(self) -> float | None:
        measured = [v for v in self.values if v is not None]
        return statistics.median(measured) if measured else None

    def meets(self, v: float | None) -> bool | None:
        if v is None or self.bound is None:
            return None
        return v <= self.bound if self.lower_is_better else v >= self.bound

    @property
    def met(self) -> bool | None:
        return self.meets(self.median)

    @property
    def passes_met(self) -> int:
        return sum(1 for v in self.values if self.meets(v))

    def as_dict(self) -> dict[str, Any]:
        median = self.median
        return {
            "target": self.target,
            "api": self.api,
            "values": [None if v is None else round(v, 3) for v in self.values],
            "median": None if median is None else round(median, 3),
            "bound": self.bound,
            "lower_is_better": self.lower_is_better,
            "met": self.met,
            "passes_met": self.passes_met if self.bound is not None else None,
        }


def _across(rows_per_pass: list[list[Any]], key: Any, make: Any) -> list[Across]:
    """Rows of every pass, matched by ``key(row)``, in the first pass's order."""
    order: list[Any] = []
    found: dict[Any, list[Any]] = {}
    for k, rows in enumerate(rows_per_pass):
        for row in rows:
            if key(row) not in found:
                order.append(key(row))
                found[key(row)] = [None] * len(rows_per_pass)
            found[key(row)][k] = row
    return [make(found[k]) for k in order]


def targets(passes: list[dict[str, Any]]) -> list[Across]:
    """Issue #25's targets (:func:`bench.peers.table.targets_25`) over the passes."""

    def make(rows: list[table.Ratio | None]) -> Across:
        first = next(r for r in rows if r is not None)
        return Across(
            first.target,
            first.api,
            tuple(None if r is None else r.ratio for r in rows),
            first.bound,
            first.lower_is_better,
        )

    return _across(
        [table.targets_25(results) for results in passes], lambda r: (r.target, r.api), make
    )


def workers(passes: list[dict[str, Any]]) -> list[Across]:
    """``--workers N`` against one process, each point over the passes (not a target)."""

    def make(rows: list[table.WorkersPoint | None]) -> Across:
        first = next(r for r in rows if r is not None)
        what = "p50" if first.metric == "p50" else "images/s"
        return Across(
            f"{first.label}, {what}: {first.workers} / one process",
            first.api,
            tuple(None if r is None else r.ratio for r in rows),
        )

    return _across(
        [table.workers_points(results) for results in passes],
        lambda w: (w.workers, w.api, w.size, w.concurrency),
        make,
    )


def own_cost(passes: list[dict[str, Any]]) -> list[Across]:
    """What ours spent per request beyond the floor and the model, each pass (ms of CPU)."""
    out = []
    for api, what in (("oip", "unary ModelInfer"), ("stream", "PredictStream message")):
        values = []
        for results in passes:
            x = table.ceiling(results, api) or {}
            values.append(x.get("ours_own_ms_per_request"))
        out.append(Across(f"ms CPU per {what} beyond floor + model", api, tuple(values)))
    return out


def _cell(v: float | None, digits: int = 2, suffix: str = "x") -> str:
    return "n/a" if v is None else f"{v:.{digits}f}{suffix}"


def rows_table(rows: list[Across], passes: int, *, digits: int = 2, suffix: str = "x") -> str:
    heads = [f"pass {k}" for k in range(1, passes + 1)]
    targeted = any(r.bound is not None for r in rows)
    head = ["target" if targeted else "ratio", "our API", *heads, "median"]
    if targeted:
        head += ["target ratio", "met (median)", "passes met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.target, table.LABEL.get(r.api, r.api)]
        cells += [_cell(v, digits, suffix) for v in r.values]
        cells.append(_cell(r.median, digits, suffix))
        if targeted:
            sign = "≤" if r.lower_is_better else "≥"
            bound = "n/a" if r.bound is None else f"{sign} {r.bound:g}x"
            cells += [bound, {True: "yes", False: "**no**", None: "n/a"}[r.met]]
            cells.append(f"{r.passes_met} of {sum(v is not None for v in r.values)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(passes: list[dict[str, Any]], command: str) -> str:
    n = len(passes)
    order = [" → ".join(p.get("servers", {})) for p in passes]
    errors = [table.our_errors(p) for p in passes]
    against_one = workers(passes)
    parts = [
        f"Command: `{command}`",
        f"Machine: {passes[0].get('machine', '?') if passes else '?'}",
        "",
        f"{n} passes; each pass's report (every point, the ceilings, the peers) is in "
        "`pass-K/peers.md`. Order of the servers in each pass:",
        "",
        *(
            f"{k}. {o} (load average before/after: {p.get('loadavg_before', '?')} / "
            f"{p.get('loadavg_after', '?')})"
            for k, (o, p) in enumerate(zip(order, passes, strict=True), 1)
        ),
        "",
        "## Issue #25's targets, each pass and the median",
        "",
        "Each value is a same-pass ratio (ours and its reference measured in that pass); the",
        "verdict is the median's.",
        "",
        rows_table(targets(passes), n),
        "",
        "## --workers against one process, each pass and the median",
        "",
        rows_table(against_one, n) if against_one else "No --workers run.",
        "",
        "## What ours spent beyond the grpc.aio floor and the model",
        "",
        rows_table(own_cost(passes), n, digits=3, suffix=""),
        "",
        f"Errors and wrong-sized answers at our points, each pass: {errors}.",
        "",
    ]
    return "\n".join(parts)


def write(passes: list[dict[str, Any]], out_dir: Path, command: str) -> list[Path]:
    """Each pass's report in ``out_dir/pass-K/``, and the summary (rounds.json, rounds.md)."""
    written: list[Path] = []
    for k, results in enumerate(passes, 1):
        written += table.write(results, out_dir / f"pass-{k}")
    summary = {
        "command": command,
        "passes": len(passes),
        "order": [list(p.get("servers", {})) for p in passes],
        "targets": [r.as_dict() for r in targets(passes)],
        "workers_vs_one": [r.as_dict() for r in workers(passes)],
        "own_ms_beyond_floor_and_model": [r.as_dict() for r in own_cost(passes)],
        "errors": [table.our_errors(p) for p in passes],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "rounds.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "rounds.md").write_text(markdown(passes, command) + "\n")
    return [*written, out_dir / "rounds.json", out_dir / "rounds.md"]
