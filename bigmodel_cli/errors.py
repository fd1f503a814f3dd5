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
