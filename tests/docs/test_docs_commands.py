"""Every shell command in README.md and docs/*.md, run as written, in order, in one scratch folder.

    pytest tests/docs/test_docs_commands.py -v            # one case per command: FILE:LINE COMMAND

Commands come from ```bash / ```sh / ```shell fences (and `$ ` lines in other fences); a line
ending in `\\` or inside an open quote continues on the next one. The README runs first, then
docs/*.md in name order, all in one folder, so a page may use what an earlier one made (the
README's quick start makes runs/digits-cnn and runs/churn). A trailing `# exit N` comment says
the command is expected to exit N (a gate that fails, a bad value).

Shrunk to stay fast (`shrink`): `train` gets `--set train.epochs=3` appended (the last --set wins),
`benchmark` `--iterations 2`, generated image data 20 rows. Never run (SKIP, each with its reason):
multi-node and GPU lines, several processes, `make`, the benchmark scripts, and blocks right after a
`<!-- tested: NAME (TEST FILE) -->` comment (that test sends the block's request and checks its answer)
or a `<!-- not run here: REASON -->` one. `bigmodel serve` is
started in the background on a free port (the block's `localhost:PORT` follows it), its block's
`curl` lines must succeed (`-f`), and it must exit 0 on SIGTERM at the end of the block. Plain `bigmodel ...` lines run
in-process through the real entry point (`cli.app.main`), piped into the rest of their line
(`| jq ...`) if any; other lines run with `bash -o pipefail`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import run_in_process

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# (pattern, reason): commands this test never runs
SKIP = [
    (r"--nnodes|--node-rank|--rdzv-endpoint", "several machines"),
    (r"\btorchrun\b|\bsrun\b|\bscontrol\b|\bSLURM", "a cluster launcher (SLURM, torchrun)"),
    (r"--devices?[ =]cuda|--device[ =]cuda", "needs a GPU"),
    (r"--devices[ =](?:[2-9]|\d\d)", "several processes: tests/cli/test_train_distributed.py runs them"),
    (r"^make\b", "make: installs and runs the whole suite, which includes this test"),
    (r"benchmarks/bench_", "a benchmark: minutes of measurement (make bench)"),
    (r"\bpip install\b|\bdocker\b|\bkubectl\b", "needs the network or a cluster"),
]

# (page, text in the command) -> why it fails today; the case is xfail(strict=True), so it must be fixed
# and then removed from here
XFAIL: dict[tuple[str, str], str] = {}

SHELL_CHARS = re.compile(r"[|&;<>$`()*?~]")
EPOCHS = 3  # what `train` is shrunk to: enough for the documented gates (digits-cnn: accuracy 0.9)


@dataclass
class Command:
    page: str  # README.md, docs/cli.md
    line: int
    text: str
    block: int  # the fenced block it came from (servers stop at its end)
    expect: int = 0
    stop_server: bool = False  # the synthetic last step of a block that started `bigmodel serve`
    elsewhere: str | None = None  # the block's `<!-- tested: ... -->` or `<!-- not run here: ... -->` comment

    @property
    def id(self) -> str:
        words = self.text.split("#")[0].split() if not self.stop_server else ["stop", "serve"]
        return f"{self.page}:{self.line} {' '.join(words)[:70]}"


def _complete(text: str) -> bool:
    if text.endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:  # an open quote: the command goes on
        return False
    return True


def commands(path: Path) -> list[Command]:
    page = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Command] = []
    fence, block, i = None, 0, 0
    pending = elsewhere = None  # a comment right before a block says where it is run instead
    while i < len(lines):
        line = lines[i]
        marker = re.match(r"^\s*```(\S*)", line)
        note = re.match(r"^<!-- (tested: .*|not run here: .*) -->$", line.strip()) if fence is None else None
        if note or (fence is None and not marker and line.strip()):
            pending = note.group(1) if note else None
        if marker:
            if fence is None:
                fence, block = marker.group(1) or "text", block + 1
                elsewhere, pending = pending, None
            else:
                if any(c.block == block and "bigmodel serve" in c.text for c in found):
                    found.append(Command(page, i + 1, "", block, stop_server=True, elsewhere=elsewhere))
                fence = None
            i += 1
            continue
        text = None
        if fence in ("bash", "sh", "shell"):
            text = line
        elif fence is not None and line.lstrip().startswith("$ "):
            text = line.lstrip()[2:]
        if text is None or not text.strip() or text.strip().startswith("#"):
            i += 1
            continue
        start = i
        while not _complete(text) and i + 1 < len(lines):
            i += 1
            text = text[:-1].rstrip() + " " + lines[i].strip() if text.endswith("\\") else text + "\n" + lines[i]
        expect = re.search(r"#[^'\"]*\bexit (\d+)\s*$", text)
        found.append(Command(page, start + 1, text.strip(), block, int(expect.group(1)) if expect else 0,
                             elsewhere=elsewhere))
        i += 1
    return found


CASES = [c for page in PAGES for c in commands(page)]


def _skip_reason(command: Command) -> str | None:
    if command.elsewhere:
        return command.elsewhere
    for pattern, reason in SKIP:
        if re.search(pattern, command.text, re.M):
            return reason
    if re.search(r"\|\s*jq\b", command.text) and shutil.which("jq") is None:
        return "jq is not installed"
    return None


def shrink(text: str) -> str:
    """Tiny settings for slow commands; comments dropped."""
    words = shlex.split(text, comments=True)
    if words[:2] == ["bigmodel", "train"]:
        text = _append(text, f"--set train.epochs={EPOCHS}")
    if words[:2] == ["bigmodel", "benchmark"] and "--iterations" not in words:
        text = _append(text, "--iterations 2")
    if words[:3] in (["python", "benchmarks/recipe_data.py", kind] for kind in ("mnist", "cifar10", "folder")):
        text = re.sub(r"--(rows|test-rows) \d+", r"--\1 20", text)  # images drawn one by one: a few suffice
    return text


def _append(text: str, extra: str) -> str:
    """Insert `extra` into the bigmodel part of a command (before a pipe or a trailing comment)."""
    head, sep, tail = _split_pipe(text)
    code = re.sub(r"\s+#[^'\"]*$", "", head).rstrip()
    return f"{code} {extra}{sep}{tail}"


def _split_pipe(text: str) -> tuple[str, str, str]:
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "|" and text[i + 1:i + 2] != "|":
            return text[:i], " |", text[i + 1:]
    return text, "", ""


@dataclass
class Session:
    """The scratch folder and what runs in it: a `bigmodel` and `python` on PATH, servers by block."""

    root: Path
    env: dict[str, str]
    servers: dict[tuple[str, int], subprocess.Popen] = field(default_factory=dict)
    ports: dict[str, dict[str, str]] = field(default_factory=dict)  # page -> documented port -> real port


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    bin_dir = root / ".bin"
    bin_dir.mkdir()
    for name, line in (("bigmodel", f'exec "{sys.executable}" -m bigmodel_cli "$@"'),
                       ("python", f'exec "{sys.executable}" "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{line}\n")
        (bin_dir / name).chmod(0o755)
    (root / "benchmarks").symlink_to(REPO / "benchmarks")  # `python benchmarks/recipe_data.py ...`
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "CI": "1",
           "PYTHONWARNINGS": "ignore"}
    env.pop("BIGMODEL_DEBUG", None)
    state = Session(root, env)
    yield state
    for proc in state.servers.values():
        proc.kill()


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _with_ports(session: Session, command: Command) -> str:
    text = command.text
    for documented, real in session.ports.get(command.page, {}).items():
        text = re.sub(rf"\b(localhost|127\.0\.0\.1):{documented}\b", rf"\g<1>:{real}", text)
        text = re.sub(rf"--port[ =]{documented}\b", f"--port {real}", text)
    return text


def _start_server(session: Session, command: Command) -> None:
    words = shlex.split(command.text, comments=True)
    documented = words[words.index("--port") + 1] if "--port" in words else "8000"
    real = _free_port()
    session.ports.setdefault(command.page, {})[documented] = real
    text = _with_ports(session, command)
    if "--port" not in words:
        text = _append(text, f"--port {real}")
    proc = subprocess.Popen(shlex.split(text, comments=True), cwd=session.root, env=session.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    session.servers[(command.page, command.block)] = proc
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
        with contextlib.suppress(OSError), \
                urllib.request.urlopen(f"http://127.0.0.1:{real}/v2/health/ready", timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("serve did not become ready within 90 s")


def _stop_server(session: Session, command: Command) -> None:
    proc = session.servers.pop((command.page, command.block))
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("serve did not stop within 60 s of SIGTERM") from None
    assert code == 0, f"serve exited {code} on SIGTERM: {proc.stderr.read()[-2000:]}"


def _params():
    for command in CASES:
        marks = [pytest.mark.slow]
        reason = next((why for (page, text), why in XFAIL.items() if page == command.page and text in command.text),
                      None)
        if reason:
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
        yield pytest.param(command, id=command.id, marks=marks)


@pytest.mark.parametrize("command", list(_params()))
def test_documented_command(session, command):
    reason = _skip_reason(command)
    if reason:
        pytest.skip(reason)
    if command.stop_server:
        _stop_server(session, command)
        return
    if command.text.startswith("bigmodel serve"):
        _start_server(session, command)
        return
    text = shrink(_with_ports(session, command))
    text = re.sub(r"^curl -s\b", "curl -sSf", text)  # an HTTP error fails the command
    words = shlex.split(text, comments=True)
    head, pipe, tail = _split_pipe(text)
    if words[0] == "bigmodel" and not SHELL_CHARS.search(head.split("#")[0]):
        # the bigmodel part in-process (no interpreter start, no torch import), the rest of a pipe in bash
        done = run_in_process(*shlex.split(head, comments=True)[1:], cwd=session.root, env=session.env)
        code, out, err = done.code, done.stdout, done.stderr
        if pipe:
            proc = subprocess.run(["bash", "-o", "pipefail", "-c", tail], input=out, cwd=session.root,
                                  env=session.env, capture_output=True, text=True, timeout=60)
            code, out, err = code or proc.returncode, proc.stdout, err + proc.stderr
    else:
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", text], cwd=session.root, env=session.env,
                              capture_output=True, text=True, timeout=300)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    assert code == command.expect, (f"{command.page}:{command.line} exited {code}, expected {command.expect}\n"
                                     f"$ {text}\n--- stdout\n{out[-1500:]}\n--- stderr\n{err[-3000:]}")


def test_the_parser_finds_commands_as_written(tmp_path):
    """The extraction itself: continuation lines, quotes over several lines, `$ ` lines, exit codes."""
    page = tmp_path / "sample.md"
    page.write_text("text\n```bash\nbigmodel a \\\n  --x 1   # note\n# a comment\n\ncurl -d '{\"a\":\n 1}'\n"
                    "bigmodel eval r --fail-under accuracy=1.01   # exit 3\nbigmodel serve r\n```\n"
                    "```console\n$ bigmodel info\noutput line\n```\n```yaml\nkey: value\n```\n")
    found = commands(page)
    assert [c.text for c in found] == ["bigmodel a --x 1   # note", "curl -d '{\"a\":\n 1}'",
                                       "bigmodel eval r --fail-under accuracy=1.01   # exit 3", "bigmodel serve r",
                                       "", "bigmodel info"]
    assert [c.expect for c in found] == [0, 0, 3, 0, 0, 0] and found[4].stop_server
    assert [c.line for c in found] == [3, 7, 9, 10, 11, 13]
    assert shrink("bigmodel train -r x --json | jq .a") == "bigmodel train -r x --json --set train.epochs=3 | jq .a"
    assert shrink("bigmodel train -r x   # a comment") == "bigmodel train -r x --set train.epochs=3"
    assert any(_skip_reason(c) for c in CASES), "the skip list matches nothing: is it still needed?"
