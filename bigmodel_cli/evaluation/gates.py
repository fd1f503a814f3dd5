"""Quality gates: what `bigmodel eval --fail-under / --fail-over` checks before a model may ship.

    bigmodel eval runs/breast-cancer-mlp --fail-under roc_auc=0.97 --fail-over log_loss=0.2   # exit 3 if one fails

`--fail-under` gates a score that must stay at or above a value, `--fail-over` a loss or
error that must stay at or below it. The recipe's `eval.fail_under` / `eval.fail_over` are
gates too; a command-line gate on the same metric replaces the recipe's. An undefined
(null) metric fails its gate. An unknown metric name is an exit-2 error naming the nearest
valid one, raised before anything is evaluated.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from bigmodel_cli.errors import UsageError


@dataclass(frozen=True)
class Gate:
    metric: str
    limit: float
    kind: str  # "fail_under": value >= limit passes; "fail_over": value <= limit passes

    @property
    def flag(self) -> str:
        return "--" + self.kind.replace("_", "-")

    def passes(self, value: float | None) -> bool:
        if value is None:
            return False
        return value >= self.limit if self.kind == "fail_under" else value <= self.limit


def parse(items: list[str], kind: str = "fail_under") -> dict[str, float]:
    """`["accuracy=0.9"]` -> {"accuracy": 0.9}; a malformed item is an exit-2 error quoting it."""
    flag = "--" + kind.replace("_", "-")
    gates = {}
    for item in items:
        name, sep, raw = item.partition("=")
        try:
            value = float(raw)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise UsageError(f"{flag} '{item}': expected METRIC=VALUE, e.g. {flag} accuracy=0.9")
        gates[name.strip()] = value
    return gates


def resolve(recipe_eval, fail_under: dict[str, float], fail_over: dict[str, float],
            known: tuple[str, ...]) -> list[Gate]:
    """Recipe gates overridden by the command line's; unknown metric names are exit 2 with a suggestion."""
    gates = [Gate(m, v, "fail_under") for m, v in {**recipe_eval.fail_under, **fail_under}.items()]
    gates += [Gate(m, v, "fail_over") for m, v in {**recipe_eval.fail_over, **fail_over}.items()]
    for gate in gates:
        if gate.metric not in known:
            near = difflib.get_close_matches(gate.metric, known, n=1, cutoff=0.5)
            hint = f"; did you mean '{near[0]}'?" if near else f"; metrics: {', '.join(known)}"
            raise UsageError(f"{gate.flag} {gate.metric}: unknown metric{hint}")
    return gates


def check(gates: list[Gate], metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One result per gate, as written to the report's `gates`."""
    return [{"metric": g.metric, "kind": g.kind, "limit": g.limit, "value": metrics.get(g.metric),
             "passed": g.passes(metrics.get(g.metric))} for g in gates]


def failure_message(result: dict[str, Any]) -> str:
    """`gate failed: accuracy = 0.9123 is below 0.95` (what exit 3 prints)."""
    value = result["value"]
    if value is None:
        return f"gate failed: {result['metric']} is undefined (null) here, so it cannot meet {result['limit']:g}"
    side = "below" if result["kind"] == "fail_under" else "above"
    return f"gate failed: {result['metric']} = {value:.6g} is {side} {result['limit']:g}"
