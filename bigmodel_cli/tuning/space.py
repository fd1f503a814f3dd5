"""A search space: dotted recipe keys, each a float or int range or a list of choices, checked against the recipe
schema before any trial runs.

    # space.yaml
    train.optimizer.lr: {float: [1.0e-4, 1.0e-1], log: true}
    model.args.width: {int: [8, 64], step: 8}
    train.optimizer.name: {choice: [adamw, sgd]}

    space = load_space("space.yaml", base)      # base: the recipe as a mapping, --set applied
    values = space.suggest(trial)               # {"train.optimizer.lr": 0.0031, ...}
    sets = [set_arg(k, v) for k, v in values.items()]   # ["train.optimizer.lr=0.0031", ...] for `train --set`
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bigmodel_cli.errors import UsageError, first_line

KINDS = ("float", "int", "choice")
OPTIONS = ("log", "step")


@dataclass
class Param:
    key: str
    kind: str  # float | int | choice
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list[Any] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"choice": self.choices}
        out: dict[str, Any] = {self.kind: [self.low, self.high]}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass
class Space:
    params: list[Param]
    path: str

    def describe(self) -> dict[str, Any]:
        """The canonical form, stored with the study to recognise it on resume."""
        return {p.key: p.describe() for p in self.params}

    def suggest(self, trial) -> dict[str, Any]:
        """One value per key from an Optuna trial (enqueued trials get their fixed values back)."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.kind == "float":
                values[p.key] = trial.suggest_float(p.key, p.low, p.high, log=p.log, step=p.step)
            elif p.kind == "int":
                values[p.key] = trial.suggest_int(p.key, p.low, p.high, step=p.step or 1, log=p.log)
            else:
                labels = [_label(c) for c in p.choices]
                picked = trial.suggest_categorical(p.key, labels)
                values[p.key] = p.choices[labels.index(picked)]
        return values


def _label(value: Any) -> Any:
    """Optuna keeps scalar choices; a list or mapping choice is kept as its YAML text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else yaml_text(value)


def yaml_text(value: Any) -> str:
    """A value as one line of YAML, so that `--set key=TEXT` reads it back as the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
    return text.removesuffix("...").strip()


def set_arg(key: str, value: Any) -> str:
    return f"{key}={yaml_text(value)}"


# -- loading and checking ---------------------------------------------------------------


def load_space(path: str | Path, base: dict[str, Any]) -> Space:
    """Read and check a space file against the recipe `base` (a mapping, --set applied): every key a recipe key,
    every range non-empty, every bound and choice a value the schema accepts."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--space {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UsageError(f"--space {path}: not valid YAML ({first_line(e)})") from None
    if not isinstance(data, dict) or not data:
        raise UsageError(f"--space {path}: expected a mapping of recipe keys, e.g. "
                         "train.optimizer.lr: {float: [1.0e-4, 1.0e-1], log: true}")
    entries = _dotted(data, "")
    params = [_param(path, key, spec) for key, spec in entries.items()]
    keys = recipe_keys()
    for p in params:
        _check_key(path, p.key, keys)
    for p in params:
        _check_values(path, p, base)
    return Space(params, str(path))


def _dotted(data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """`train: {optimizer: {lr: {float: [...]}}}` is the same as `train.optimizer.lr: {float: [...]}`."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and not (set(value) & set(KINDS)) and all(
                isinstance(v, dict) for v in value.values()):
            out.update(_dotted(value, f"{name}."))
        else:
            out[name] = value
    return out


def _number(path: Path, key: str, kind: str, value: Any) -> float | int:
    if isinstance(value, str):  # YAML reads 1e-4 (no dot) as text
        with contextlib.suppress(ValueError):
            value = float(value) if kind == "float" else int(value)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "int":
        ok = ok and float(value).is_integer()
    if not ok:
        what = "an integer" if kind == "int" else "a number"
        raise UsageError(f"--space {path}: {key}: {kind} bound {value!r} is not {what}")
    return int(value) if kind == "int" else float(value)


def _param(path: Path, key: str, spec: Any) -> Param:
    example = "{float: [1.0e-4, 1.0e-1], log: true}, {int: [8, 64], step: 8} or {choice: [adamw, sgd]}"
    if not isinstance(spec, dict):
        raise UsageError(f"--space {path}: {key}: expected {example}, got {spec!r}")
    kinds = [k for k in spec if k in KINDS]
    unknown = [k for k in spec if k not in KINDS + OPTIONS]
    if unknown:
        near = difflib.get_close_matches(str(unknown[0]), KINDS + OPTIONS, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else f" (valid: {', '.join(KINDS + OPTIONS)})"
        raise UsageError(f"--space {path}: {key}: unknown field '{unknown[0]}'{hint}")
    if len(kinds) != 1:
        raise UsageError(f"--space {path}: {key}: give exactly one of float, int, choice, e.g. {example}")
    kind = kinds[0]
    if kind == "choice":
        choices = spec["choice"]
        if not isinstance(choices, list) or not choices:
            raise UsageError(f"--space {path}: {key}: empty choice; list the values, e.g. {{choice: [adamw, sgd]}}")
        labels = [yaml_text(c) for c in choices]
        if len(set(labels)) != len(labels):
            raise UsageError(f"--space {path}: {key}: choice lists a value twice ({choices})")
        if set(spec) - {"choice"}:
            raise UsageError(f"--space {path}: {key}: log and step apply to float and int ranges, not to choice")
        return Param(key, "choice", choices=list(choices))
    bounds = spec[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise UsageError(f"--space {path}: {key}: {kind} takes [low, high], got {bounds!r}")
    low, high = (_number(path, key, kind, b) for b in bounds)
    if low > high:
        raise UsageError(f"--space {path}: {key}: inverted range [{low}, {high}] (low > high); write [{high}, {low}]")
    if low == high:
        raise UsageError(f"--space {path}: {key}: empty range [{low}, {high}]; for a fixed value use "
                         f"--set {key}={low}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UsageError(f"--space {path}: {key}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise UsageError(f"--space {path}: {key}: a log range needs low > 0 (got {low})")
    step = spec.get("step")
    if step is not None:
        step = _number(path, key, kind, step)
        if step <= 0:
            raise UsageError(f"--space {path}: {key}: step must be > 0 (got {step})")
        if log:
            raise UsageError(f"--space {path}: {key}: use either log or step, not both")
        if kind == "int" and (high - low) % step:
            raise UsageError(f"--space {path}: {key}: [{low}, {high}] is not a whole number of steps of {step}")
        if step > high - low:
            raise UsageError(f"--space {path}: {key}: step {step} is larger than the range [{low}, {high}]")
    return Param(key, kind, low=low, high=high, log=log, step=step)


def recipe_keys() -> tuple[list[str], list[str]]:
    """(every settable dotted key of the recipe schema, the free-form mappings such as model.args)."""
    from pydantic import BaseModel

    from bigmodel_cli.config.schema import Recipe

    leaves: list[str] = []
    free: list[str] = []

    def model_of(annotation: Any):
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        for c in candidates:
            if isinstance(c, type) and issubclass(c, BaseModel):
                return c
        return None

    def walk(model: Any, prefix: str) -> None:
        for name, f in model.model_fields.items():
            sub = model_of(f.annotation)
            key = f"{prefix}{name}"
            if sub is not None:
                walk(sub, f"{key}.")
                continue
            origin = getattr(f.annotation, "__origin__", None)
            if origin is dict or f.annotation is dict or str(f.annotation).startswith("dict["):
                free.append(key)
            leaves.append(key)

    walk(Recipe, "")
    return leaves, free


def _check_key(path: Path, key: str, keys: tuple[list[str], list[str]]) -> None:
    leaves, free = keys
    if key in leaves or any(key.startswith(f"{f}.") for f in free):
        return
    sections = {leaf.rsplit(".", 1)[0] for leaf in leaves if "." in leaf}
    if key in sections:
        raise UsageError(f"--space {path}: '{key}' is a section of the recipe; search its keys, e.g. "
                         f"{next(leaf for leaf in leaves if leaf.startswith(key + '.'))}")
    near = difflib.get_close_matches(key, leaves, n=1, cutoff=0.6)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    raise UsageError(f"--space {path}: '{key}' is not a recipe key{hint}")


def _check_values(path: Path, p: Param, base: dict[str, Any]) -> None:
    """Each bound and choice must be a value the recipe schema accepts (lr > 0, optimizer in its list...)."""
    from bigmodel_cli.config.recipe import RecipeError, set_dotted, validate

    values = p.choices if p.kind == "choice" else [p.low, p.high]
    for value in values:
        data = copy.deepcopy(base)
        set_dotted(data, p.key, value, f"--space {path}")
        try:
            validate(data, f"--space {path}")
        except RecipeError as e:
            mine = [m for m in e.problems if f": {p.key}" in m or f"'{p.key}'" in m] or e.problems
            what = "choice" if p.kind == "choice" else f"{p.kind} bound"
            raise UsageError(f"{mine[0]} ({what} {value!r} of {p.key})") from None
