"""Every recipe key with its type, default and meaning, read from `config/schema.py` (its comments are the meanings).

    python -m bigmodel_cli.config.reference                          # print the Markdown tables
    python -m bigmodel_cli.config.reference --write docs/recipes.md   # replace them between the markers there

`tests/docs/test_docs_reference.py` checks that docs/recipes.md holds exactly these tables, so the
reference cannot drift from the schema: change a key or its comment in schema.py, then run `--write`.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import json
import tokenize
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic_core import PydanticUndefined

from bigmodel_cli.config import schema

BEGIN = "<!-- recipe keys: generated from bigmodel_cli/config/schema.py by " \
        "`python -m bigmodel_cli.config.reference --write docs/recipes.md`; do not edit by hand -->"
END = "<!-- end of recipe keys -->"


def _meanings(cls: type) -> dict[str, str]:
    """Field name -> its comment in schema.py (the comment on its lines and `#` lines right after it)."""
    source = inspect.getsource(cls)
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    node = ast.parse(source).body[0]
    meanings = {}
    for item in node.body:
        if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
            continue
        parts = [comments[n] for n in range(item.lineno, item.end_lineno + 1) if n in comments]
        n = item.end_lineno + 1
        while n <= len(lines) and lines[n - 1].strip().startswith("#"):  # a comment continued on the next line
            parts.append(comments[n])
            n += 1
        meanings[item.target.id] = " ".join(p for p in parts if p)
    return meanings


def _section(annotation: Any) -> type | None:
    """The Section class a key holds (also `Section | None`), else None."""
    candidates = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    for c in candidates:
        if isinstance(c, type) and issubclass(c, schema.Section):
            return c
    return None


def _type(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        text = " or ".join(_type(a) for a in args if a is not type(None))
        return f"{text} or null" if type(None) in args else text
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"mapping of {_type(args[0])} to {_type(args[1])}"
    if origin is tuple:
        return f"[{', '.join(_type(a) for a in args)}]"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, schema.Section):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: Any) -> str:
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    found = []
    for meta in field.metadata:
        for attr, sign in signs.items():
            value = getattr(meta, attr, None)
            if value is not None:
                found.append(f"{sign} {value}")
    return f" ({', '.join(found)})" if found else ""


def _value(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value)}`"


def _default(field: Any) -> str:
    if field.default_factory is not None:
        return _value(field.default_factory())
    if field.default is PydanticUndefined:
        return "required"
    return _value(field.default)


def rows(cls: type = schema.Recipe, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, meaning) for every key under `cls`, sections expanded in place."""
    meanings = _meanings(cls)
    found = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        section = _section(field.annotation)
        if section is not None:
            if field.default_factory is None:  # an optional section (default null): a key of its own
                found.append((key, "section or null", _default(field), meanings.get(name, "")))
            found.extend(rows(section, f"{key}."))
            continue
        found.append((key, _type(field.annotation) + _bounds(field), _default(field), meanings.get(name, "")))
    return found


def markdown() -> str:
    """One table per top-level section (the scalar top-level keys first), between the markers."""
    groups: dict[str, list[tuple[str, str, str, str]]] = {}
    for row in rows():
        head = row[0].split(".")[0] if "." in row[0] else ""
        groups.setdefault(head, []).append(row)
    out = [BEGIN, ""]
    for head, group in groups.items():
        out.append(f"### `{head}`" if head else "### Top level")
        out.append("")
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        out += [f"| `{key}` | {kind} | {default} | {meaning.replace('|', chr(92) + '|')} |"
                for key, kind, default, meaning in group]
        out.append("")
    out.append(END)
    return "\n".join(out)


def replace_block(text: str) -> str:
    """`text` with the generated block between the markers replaced (appended when there are none)."""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        return head + markdown() + tail
    return text.rstrip("\n") + "\n\n" + markdown() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="A Markdown file whose generated block to replace.")
    args = parser.parse_args(argv)
    if args.write is None:
        print(markdown())
        return
    args.write.write_text(replace_block(args.write.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
