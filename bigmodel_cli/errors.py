"""The errors a command can end with, each carrying the exit code of SPEC.md.

The CLI prints `error: <message>` on one line and exits with `exit_code`; a traceback
only with `--debug` or `BIGMODEL_DEBUG=1`. Engine code raises these and never calls
`sys.exit` itself.
"""

from __future__ import annotations


class BigmodelError(Exception):
    """Base class: a failure the user should read as one line."""

    exit_code = 1


class UsageError(BigmodelError):
    """Bad usage or bad input: unknown key, wrong type, missing file, malformed data (exit 2)."""

    exit_code = 2


class JobFailed(BigmodelError):
    """The job ran and failed: diverged loss, export verification failed (exit 1)."""

    exit_code = 1


class GateFailed(BigmodelError):
    """A quality gate (`eval --fail-under`) was not met (exit 3)."""

    exit_code = 3


class Interrupted(BigmodelError):
    """Stopped by SIGINT/SIGTERM after saving what can be resumed (exit 130)."""

    exit_code = 130


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (at most `limit` characters), or its type's name when empty."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


def named_line(error: BaseException, limit: int | None = None) -> str:
    """'TypeName: first line of the message' (the line at most `limit` characters), or the type's name alone."""
    return f"{type(error).__name__}: {first_line(error, limit)}" if str(error).strip() else type(error).__name__


def report_to_launcher(line: str) -> None:
    """Inside a torch.distributed.run worker: leave the error where the launcher reads it (its error file), so
    the launcher names this rank's failure; elsewhere nothing."""
    import json
    import os
    import time

    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path and not os.path.exists(path):
        try:
            with open(path, "w") as f:
                json.dump({"message": {"message": line, "extraInfo": {"timestamp": str(int(time.time()))}}}, f)
        except OSError:
            pass
