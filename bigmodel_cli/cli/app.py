"""`bigmodel`: the command registry and the one place errors become exit codes.

    bigmodel --help
    bigmodel --debug train -r digits-cnn     # tracebacks instead of one-line errors
"""

from __future__ import annotations

import os
import sys

import typer

from bigmodel_cli import __version__
from bigmodel_cli.cli import benchmark, export, info, predict, prepare_data, recipes, serve, train
from bigmodel_cli.cli import eval as eval_cmd

app = typer.Typer(
    name="bigmodel",
    help="From raw data to a served endpoint: prepare-data, train, eval, export, serve - one recipe drives them all.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("info")(info.info)
app.add_typer(recipes.app, name="recipes")
app.command("prepare-data")(prepare_data.prepare_data)
app.command("train")(train.train)
app.command("eval")(eval_cmd.eval_run)
app.command("export")(export.export)
app.command("benchmark")(benchmark.benchmark)
app.command("serve")(serve.serve)
app.command("predict")(predict.predict)


def _version(value: bool) -> None:
    if value:
        print(f"bigmodel {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks (also BIGMODEL_DEBUG=1)."),
) -> None:
    if debug:
        os.environ["BIGMODEL_DEBUG"] = "1"


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app and turn every failure into one line and an exit code."""
    from bigmodel_cli.console import debug_enabled
    from bigmodel_cli.errors import BigmodelError

    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:  # accepted anywhere on the line, not only before the command
        args.remove("--debug")
        os.environ["BIGMODEL_DEBUG"] = "1"
    try:
        code = app(args=args, prog_name="bigmodel", standalone_mode=False)
    except BigmodelError as e:
        _fail(str(e), e.exit_code, debug_enabled())
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted", 130, debug_enabled())
    except Exception as e:
        if hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int):
            # the parser's usage errors: unknown option, missing argument, bad value
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _fail(f"{e.format_message()}{hint}", 2 if e.exit_code == 1 else e.exit_code, debug_enabled())
        # a bug of ours: say so on one line, traceback with --debug
        _fail(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", 1, debug_enabled())
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int, show_traceback: bool) -> None:
    if show_traceback:
        import traceback

        traceback.print_exc()
    first_line = message.strip().splitlines()[0] if message.strip() else "failed"
    sys.stderr.write(f"error: {first_line}\n")
    sys.stderr.flush()
    _report_to_launcher(first_line)
    sys.exit(code)


def _report_to_launcher(line: str) -> None:
    """Inside a torch.distributed.run worker: leave the error where the launcher reads it (its error file)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path and not os.path.exists(path):
        import json
        import time

        try:
            with open(path, "w") as f:
                json.dump({"message": {"message": line, "extraInfo": {"timestamp": str(int(time.time()))}}}, f)
        except OSError:
            pass
