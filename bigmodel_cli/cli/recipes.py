"""`bigmodel recipes list|show|copy|validate`: the shipped recipes and checking your own.

    bigmodel recipes list
    bigmodel recipes copy digits-cnn my-digits.yaml     # name: my-digits (or --name NAME)
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
    from bigmodel_cli.console import console

    # one line of columns and one of description per recipe: fits 100 columns in a log, nothing cut
    columns = [[r["name"] for r in rows], [r["task"] for r in rows], [str(r["model"]) for r in rows],
               [str(r["source"]) for r in rows]]
    widths = [max(len(v) for v in [head, *values]) for head, values in zip(("recipe", "task", "model", "data"),
                                                                            columns, strict=True)]
    console.print("  ".join(h.ljust(w) for h, w in zip(("recipe", "task", "model", "data"), widths, strict=True))
                  .rstrip(), markup=False)
    for row, *cells in zip(rows, *columns, strict=True):
        console.print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip(), markup=False)
        console.print(f"  {row['description']}", markup=False)


@app.command("show")
def show(name: str = typer.Argument(..., help="Recipe name or path.")) -> None:
    """Print a recipe file, comments included, on stdout (it is the answer, as `cat` would print it)."""
    import sys

    from bigmodel_cli.config.recipe import locate

    sys.stdout.write(locate(name).read_text(encoding="utf-8"))


@app.command("copy")
def copy(
    name: str = typer.Argument(..., help="Recipe name (or path)."),
    dest: Path = typer.Argument(..., help="Where to write the copy (.yaml); its file name is the copy's name."),
    new_name: str | None = typer.Option(None, "--name", help="The copy's `name:` (default: DEST's file name "
                                        "without .yaml); it names data/<name> and runs/<name>."),
    force: bool = typer.Option(False, "--force", help="Overwrite DEST if it exists."),
) -> None:
    """Copy a recipe to a file you can edit, named after that file so its data and runs are its own."""
    import yaml

    from bigmodel_cli import atomic
    from bigmodel_cli.config import catalog
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
    text = source.read_text(encoding="utf-8")
    old = (yaml.safe_load(text) or {}).get("name") or source.stem
    new = new_name or dest.stem
    where = f"--name {new_name}" if new_name else f"{dest}: the copy's name '{new}' (its file name)"
    if not catalog.NAME.match(new):
        raise UsageError(f"{where} is not a valid recipe name (letters, digits, '.', '_', '-'); "
                         f"choose another file name or pass --name")
    if new == old or catalog.path_of(new) is not None:
        raise UsageError(f"{where} is a shipped recipe's name: the copy's data/{new} and runs/{new} would mix "
                         f"with it; choose another file name or pass --name")
    atomic.write_bytes(dest, catalog.renamed(text, str(old), new, str(dest)).encode("utf-8"))
    info(f"wrote {dest} (name: {new}; prepare-data -r {dest} writes data/{new}, train writes runs/{new})")


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
