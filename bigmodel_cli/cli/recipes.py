"""`bigmodel recipes list|show|copy|validate`: the shipped recipes and checking your own.

    bigmodel recipes list
    bigmodel recipes copy digits-cnn my-digits.yaml
    bigmodel recipes validate my-digits.yaml
"""

from __future__ import annotations

from pathlib import Path

import typer

from bigmodel_cli.cli.common import JSON, finish, start

app = typer.Typer(help="List, show, copy and validate recipes.", no_args_is_help=True)


@app.command("list")
def list_recipes(as_json: bool = JSON) -> None:
    """List the shipped recipes."""
    from bigmodel_cli.config import catalog

    start(as_json)
    rows = [catalog.summary(catalog.path_of(name)) for name in catalog.names()]
    if as_json:
        finish({"recipes": rows}, True)
        return
    from rich.table import Table

    from bigmodel_cli.console import stdout

    table = Table(box=None)
    table.add_column("recipe", no_wrap=True, style="bold")
    table.add_column("task", no_wrap=True)
    table.add_column("model", no_wrap=True)
    table.add_column("data", no_wrap=True)
    table.add_column("description")
    for row in rows:
        table.add_row(row["name"], row["task"], str(row["model"]), str(row["source"]), row["description"])
    stdout.print(table)


@app.command("show")
def show(name: str = typer.Argument(..., help="Recipe name or path.")) -> None:
    """Print a recipe file, comments included."""
    import sys

    from bigmodel_cli.config.recipe import locate

    sys.stdout.write(locate(name).read_text(encoding="utf-8"))


@app.command("copy")
def copy(
    name: str = typer.Argument(..., help="Recipe name."),
    dest: Path = typer.Argument(..., help="Where to write the copy (.yaml)."),
    force: bool = typer.Option(False, "--force", help="Overwrite DEST if it exists."),
) -> None:
    """Copy a shipped recipe to a file you can edit."""
    from bigmodel_cli import atomic
    from bigmodel_cli.config.recipe import locate
    from bigmodel_cli.console import info
    from bigmodel_cli.errors import UsageError

    source = locate(name)
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists() and not force:
        raise UsageError(f"{dest} already exists (use --force to overwrite)")
    if not dest.parent.is_dir():
        raise UsageError(f"{dest.parent}: no such directory")
    atomic.write_bytes(dest, source.read_bytes())
    info(f"wrote {dest}")


@app.command("validate")
def validate(path: Path = typer.Argument(..., help="Recipe YAML file."), as_json: bool = JSON) -> None:
    """Check a recipe: exit 0 when well-formed, 2 with every problem listed."""
    from bigmodel_cli.config.recipe import locate, problems
    from bigmodel_cli.console import console

    start(as_json)
    found = problems(locate(str(path)))
    finish({"path": str(path), "valid": not found, "problems": found}, as_json)
    if found:
        if not as_json:
            import sys

            for line in found:
                sys.stderr.write(f"error: {line}\n")
        raise typer.Exit(2)
    if not as_json:
        console.print(f"{path}: ok")
