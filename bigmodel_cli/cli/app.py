"""`bigmodel`: the command registry and the one place errors become exit codes.

    bigmodel --help
    bigmodel --debug train -r digits-cnn     # tracebacks instead of one-line errors
"""

from __future__ import annotations

import os
import sys

import typer

from bigmodel_cli import __version__
from bigmodel_cli.cli import (
    benchmark,
    export,
    generate,
    info,
    predict,
    prepare_data,
    prune,
    recipes,
    serve,
    train,
    tune,
)
from bigmodel_cli.cli import eval as eval_cmd
from bigmodel_cli.errors import first_line, named_line

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
app.command("tune")(tune.tune)
app.command("generate")(generate.generate)
app.command("prune")(prune.prune)


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
    from bigmodel_cli.errors import BigmodelError

    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:  # accepted anywhere on the line, not only before the command
        args.remove("--debug")
        os.environ["BIGMODEL_DEBUG"] = "1"
    try:
        code = app(args=args, prog_name="bigmodel", standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt) as e:
        _fail("interrupted", 130, e)
    except Exception as e:
        memory = _out_of_memory(e)
        if memory is not None:  # also when the engine re-raised it as a usage error
            _fail(f"out of memory ({memory}); lower the batch size (train.batch_size or eval.batch_size, e.g. "
                  f"--set train.batch_size=16) or use a smaller model", 1, e)
        if isinstance(e, BigmodelError):
            _fail(str(e), e.exit_code, e)
        if hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int):
            # the parser's usage errors: unknown option, missing argument, bad value
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _fail(f"{e.format_message()}{hint}", 2 if e.exit_code == 1 else e.exit_code, e)
        # a bug of ours: say so on one line, traceback with --debug
        _fail(f"internal error: {named_line(e)} (rerun with --debug for the traceback)", 1, e)
    sys.exit(code if isinstance(code, int) else 0)


def _chain(error: BaseException) -> list[BaseException]:
    """The error and every exception behind it (`raise ... from e`, or raised while handling one)."""
    seen: list[BaseException] = []
    while error is not None and all(error is not s for s in seen):
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


# what torch's allocators say when an allocation fails (CUDA, CPU), when not an OutOfMemoryError
_OOM_MESSAGES = ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory")


def _out_of_memory(error: BaseException) -> str | None:
    """`MemoryError` or torch's out-of-memory error anywhere in the chain: a one-line description, else None."""
    for e in _chain(error):
        names = {t.__name__ for t in type(e).__mro__}
        if isinstance(e, MemoryError) or "OutOfMemoryError" in names or (
                isinstance(e, RuntimeError) and any(m in first_line(e).lower() for m in _OOM_MESSAGES)):
            return named_line(e, 200)
    return None


def _fail(message: str, code: int, error: BaseException | None = None) -> None:
    from bigmodel_cli.console import debug_enabled
    from bigmodel_cli.errors import report_to_launcher

    if error is not None and debug_enabled():
        import traceback

        for e in _chain(error):  # show every cause under --debug, also one a `raise ... from None` hid
            e.__suppress_context__ = False
        traceback.print_exception(type(error), error, error.__traceback__)
    line = message.strip().splitlines()[0] if message.strip() else "failed"
    sys.stderr.write(f"error: {line}\n")
    sys.stderr.flush()
    report_to_launcher(line)
    sys.exit(code)
