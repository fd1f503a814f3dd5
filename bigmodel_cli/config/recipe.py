"""Resolve a recipe: shipped name or YAML path, then flags, then `--set`, then validation.

    recipe = resolve("digits-cnn", flags={"train.epochs": 3}, sets=["train.batch_size=32"])

Every problem is reported as one line naming the file and the key, with the nearest valid
key suggested (`train.epoch` -> `train.epochs`).
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml

from bigmodel_cli.config import catalog
from bigmodel_cli.errors import UsageError, first_line


class RecipeError(UsageError):
    """A recipe that cannot be used; `problems` lists every one found (first one is the message)."""

    def __init__(self, problems: list[str]):
        super().__init__(problems[0] if len(problems) == 1 else f"{problems[0]} (and {len(problems) - 1} more)")
        self.problems = problems


def locate(ref: str) -> Path:
    """A recipe reference is a path to a YAML file, or the name of a shipped recipe."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or "/" in ref or path.exists():
        if not path.is_file():
            raise UsageError(f"recipe file not found: {ref}")
        return path
    shipped = catalog.path_of(ref)
    if shipped is None:
        names = catalog.names()
        near = difflib.get_close_matches(ref, names, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else f"; shipped recipes: {', '.join(names)}"
        raise UsageError(f"unknown recipe '{ref}'{hint} (or give a path to a .yaml file)")
    return shipped


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not a text file (recipes are UTF-8 YAML)") from e
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror})") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or first_line(e)
        raise UsageError(f"{path}:{where} not valid YAML: {problem}") from e
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a recipe must be a YAML mapping of sections (name, task, data, model, train...)")
    return data


def parse_set(item: str) -> tuple[str, Any]:
    """`a.b.c=VALUE` with VALUE parsed as YAML (`3` is an int, `[1, 2]` a list, `x` a string)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"--set '{item}': expected KEY=VALUE, e.g. --set train.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or first_line(e)
        raise UsageError(f"--set {item}: VALUE is not valid YAML ({problem}); quote a string that contains "
                         f"YAML syntax: --set '{key}=\"...\"'") from e
    return key, value


def set_dotted(data: dict[str, Any], key: str, value: Any, origin: str) -> None:
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UsageError(f"{origin}: cannot set '{key}': '{'.'.join(parts[: i + 1])}' is not a section")
        node = child
    if value in (None, False) and parts[-1] == "early_stopping" and isinstance(node.get(parts[-1]), dict):
        # `--set train.early_stopping=null` turns early stopping off and keeps the monitor best.pt follows
        node[parts[-1]] = {**node[parts[-1]], "patience": None}
        return
    node[parts[-1]] = value


# the CLI options that set a recipe key, named in errors about the value they gave
FLAGS = {"train.devices": "--devices", "data.source": "--source", "data.prepared": "--out"}


def resolve(
    ref: str | Path,
    flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
):
    """Load, override and validate a recipe; returns a `schema.Recipe`.

    A problem with a value that came from an option or a `--set` names that option, not the file.
    """
    path = locate(str(ref))
    written = load_yaml(path)
    data = copy.deepcopy(written)
    overrides: list[tuple[str, str]] = []  # (dotted key, the option that set it), in the order applied
    for key, value in (flags or {}).items():
        if value is not None:
            origin = f"{FLAGS[key]} {value}" if key in FLAGS else f"option {key}={value}"
            set_dotted(data, key, value, origin)
            overrides.append((key, origin))
    for item in sets or []:
        key, value = parse_set(item)
        set_dotted(data, key, value, f"--set {item}")
        overrides.append((key, f"--set {item}"))
    recipe = validate(data, str(path), overrides)
    _check_model_args(recipe, written, overrides, path)
    return recipe


def _origin_of(key: str, overrides: list[tuple[str, str]], default: str) -> str:
    """The option that set `key` (or a section around it, or a key inside it); the file otherwise."""
    for set_key, origin in reversed(overrides):
        if set_key == key or set_key.startswith(key + ".") or key.startswith(set_key + "."):
            return origin
    return default


def validate(data: dict[str, Any], origin: str, overrides: list[tuple[str, str]] | None = None):
    from pydantic import ValidationError

    from bigmodel_cli.config.schema import Recipe

    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        found = [f"{_origin_of(_dotted(err), overrides or [], origin)}: {describe(err, data)}" for err in e.errors()]
        raise RecipeError(found) from e


def _check_model_args(recipe, written: dict[str, Any], overrides: list[tuple[str, str]], path: Path) -> None:
    """`--set model.name=X` on a recipe whose `model.args` were written for another model: say how to drop them.

    Only when the name came from an option, the arguments from the file, and both models take the same
    kind of data; the builder's signature is checked for arguments it does not take.
    """
    origin = next((o for k, o in reversed(overrides) if k in ("model", "model.name")), None)
    if origin is None or any(k == "model" or k.startswith("model.args") for k, _ in overrides):
        return
    file_model = written.get("model") if isinstance(written.get("model"), dict) else {}
    args = recipe.model.args
    if not args or not recipe.model.name or file_model.get("name") == recipe.model.name:
        return
    import inspect

    from bigmodel_cli.models import registry  # importing bigmodel_cli.models registers every family

    new_kinds, old_kinds = registry.kinds_of(recipe.model.name), registry.kinds_of(str(file_model.get("name")))
    if new_kinds is None:
        return  # an unknown name: the registry's own error names the nearest one
    if old_kinds is not None and set(old_kinds).isdisjoint(new_kinds):
        return  # a model for another kind of data: the registry says that, which matters more
    params = inspect.signature(registry.builder(recipe.model.name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in args if k not in params]
    if unknown:
        takes = [k for k in params if k not in ("num_classes", "input_shape")]
        raise RecipeError([
            f"{origin}: model.args {', '.join(unknown)} in {path.name} were written for "
            f"'{file_model.get('name') or file_model.get('component')}' and '{recipe.model.name}' does not take "
            f"them; add --set model.args={{}} to use its defaults (it takes: {', '.join(takes) or 'nothing'})"])


def problems(path: Path) -> list[str]:
    """Every problem of a recipe file (empty when well-formed); used by `recipes validate`."""
    try:
        validate(load_yaml(path), str(path))
    except RecipeError as e:
        return e.problems
    except UsageError as e:
        return [str(e)]
    return []


def dump(recipe) -> str:
    """The resolved recipe as YAML, as written to RUN_DIR/recipe.yaml."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


# -- error messages -----------------------------------------------------------------


def _model_at(loc: tuple[Any, ...]):
    """The pydantic model class that holds the key at `loc` (for suggesting siblings)."""
    from bigmodel_cli.config.schema import Recipe

    model = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and hasattr(annotation, "model_fields")):
            return None
        model = annotation
    return model


def _value_at(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def _loc(err: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(p for p in err["loc"] if p not in ("function-after", "function-before"))


def _dotted(err: dict[str, Any]) -> str:
    return ".".join(str(p) for p in _loc(err))


def describe(err: dict[str, Any], data: dict[str, Any]) -> str:
    loc = _loc(err)
    key = _dotted(err) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc)
        valid = list(model.model_fields) if model is not None else []
        near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        parent = ".".join(str(p) for p in loc[:-1])
        if near:
            hint = f"; did you mean '{parent + '.' if parent else ''}{near[0]}'?"
        elif valid:
            hint = f"; valid keys here: {', '.join(valid)}"
        else:
            hint = ""
        return f"unknown key '{key}'{hint}"
    if kind == "missing":
        return f"missing required key '{key}'"
    value = err.get("input", _value_at(data, loc))
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ", ").split(",") if c.strip()]
        near = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        return f"{key}: {value!r} is not one of {expected}{hint}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{key}: {msg} (got {value!r})"
