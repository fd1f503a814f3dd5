"""Options every command shares, and printing a result as JSON or for people."""

from __future__ import annotations

from typing import Any

import typer

RECIPE = typer.Option(..., "--recipe", "-r", help="A shipped recipe's name (`bigmodel recipes list`) or a YAML path.")
SET = typer.Option(None, "--set", help="Override any recipe key: --set train.epochs=5 (VALUE is YAML). Repeatable.")
JSON = typer.Option(False, "--json", help="Print one JSON document on stdout and nothing else there.")


def start(as_json: bool) -> None:
    """Call first in every command: `--json` silences the human report on stderr."""
    from bigmodel_cli import console

    console.quiet(as_json)


def finish(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        from bigmodel_cli.console import print_json

        print_json(result)
