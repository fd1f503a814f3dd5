"""Where a study lives: a journal file (local, safe for several processes on one machine) or a database URL
(several machines).

    open_storage(None, default)                                  # default: RUN/<study>-tune/study.journal
    open_storage("runs/shared.journal", ...)                     # several local processes share it
    open_storage("postgresql://user:pw@db:5432/optuna", ...)     # several machines share it

A database that cannot be reached is one clear line (exit 2) within the connect timeout, never a hang.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from bigmodel_cli.errors import UsageError

CONNECT_TIMEOUT_S = int(os.environ.get("BIGMODEL_STORAGE_TIMEOUT", "10"))
RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")


def redact(url: str) -> str:
    """A URL without its password."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def is_rdb(url: str) -> bool:
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""
    return scheme in RDB_SCHEMES


def journal_path(url: str) -> Path | None:
    """`journal:PATH`, `PATH.journal` or any plain path is a journal file; a database URL is not."""
    if url.startswith("journal:"):
        return Path(url[len("journal:"):])
    if "://" in url:
        return None
    return Path(url)


def open_storage(url: str | None, default: Path, parallel: int = 1):
    """An Optuna storage for `url` (None: the journal file `default`)."""
    import optuna

    if url is None:
        return _journal(default), str(default)
    path = journal_path(url)
    if path is not None:
        return _journal(path), str(path)
    if not is_rdb(url):
        raise UsageError(f"--storage {redact(url)}: not a storage; give a journal file (runs/study.journal) or a "
                         "database URL (postgresql://user:pw@host/db, mysql://..., sqlite:///study.db)")
    if url.startswith("sqlite") and parallel > 1:
        raise UsageError(f"--storage {url} with --parallel {parallel}: SQLite locks under parallel writers; use a "
                         "journal file (--storage runs/study.journal) or a database server")
    connect_args: dict = {}
    if url.startswith(("postgres", "mysql", "mariadb")):
        connect_args = {"connect_timeout": CONNECT_TIMEOUT_S}
    elif url.startswith("sqlite"):
        connect_args = {"timeout": 60}
        db = url.split(":///", 1)[-1].split("?", 1)[0]
        if db and db != ":memory:":
            try:
                Path(db).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UsageError(f"--storage {url}: cannot create {Path(db).parent} ({e.strerror})") from None
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": connect_args,
                                                                 "pool_pre_ping": True})
    except ImportError as e:
        missing = getattr(e.__cause__, "name", None) or getattr(e, "name", None) or "the driver"
        driver = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient",
                  "pymysql": "PyMySQL"}.get(missing, missing)
        raise UsageError(f"--storage {redact(url)}: the database driver is not installed (pip install {driver})") \
            from None
    except Exception as e:
        reason = _reason(e)
        raise UsageError(f"--storage {redact(url)}: cannot open the study database ({reason})") from None
    return storage, redact(url)


def _journal(path: Path):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not path.is_file():
            raise UsageError(f"--storage {path}: not a file")
        backend = JournalFileBackend(str(path))
        return optuna.storages.JournalStorage(backend)
    except UsageError:
        raise
    except OSError as e:
        raise UsageError(f"--storage {path}: cannot write the journal file ({e.strerror or e})") from None
    except Exception as e:
        raise UsageError(f"--storage {path}: not a study journal ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    original = getattr(e, "orig", None) or e  # SQLAlchemy wraps the driver's error
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(original).__name__
