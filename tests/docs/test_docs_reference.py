"""The reference in docs/ cannot drift from the code: every recipe key (from config/schema.py) is in
docs/recipes.md with its meaning, every command's options are in docs/cli.md, and every link of README.md
and docs/ points at a file of this repository."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import pytest

from bigmodel_cli.config import reference

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_recipes_md_holds_the_generated_key_reference():
    text = (REPO / "docs" / "recipes.md").read_text(encoding="utf-8")
    assert reference.BEGIN in text and reference.END in text
    block = text[text.index(reference.BEGIN):text.index(reference.END) + len(reference.END)]
    assert block == reference.markdown(), (
        "docs/recipes.md is out of date with bigmodel_cli/config/schema.py: run "
        "`python -m bigmodel_cli.config.reference --write docs/recipes.md`")


def test_every_recipe_key_is_documented_with_a_meaning():
    rows = reference.rows()
    text = (REPO / "docs" / "recipes.md").read_text(encoding="utf-8")
    assert len(rows) > 100  # every leaf key of every section, not only the top level
    for key, _, _, meaning in rows:
        assert f"| `{key}` |" in text, f"{key} is not in docs/recipes.md"
        assert meaning, f"{key} has no comment in config/schema.py saying what it means"
    keys = {key for key, *_ in rows}
    assert {"train.early_stopping.patience", "data.augment.color_jitter.hue", "serve.max_batch_size"} <= keys


def test_the_reference_reads_types_defaults_and_comments_from_the_schema():
    rows = {key: (kind, default, meaning) for key, kind, default, meaning in reference.rows()}
    assert rows["name"] == ("str", "required", "names data/<name> and runs/<name>")
    assert rows["train.epochs"][:2] == ("int (≥ 1)", "`10`")
    assert rows["train.precision"][0] == "`32` \\| `bf16-mixed` \\| `16-mixed` \\| `bf16-true`"
    assert rows["train.loss"][2].endswith("(logits reported as [0, z])")  # a comment continued on the next line
    assert rows["data.augment.color_jitter"][:2] == ("section or null", "`null`")
    assert rows["eval.top_k"][1] == "`[2, 3, 5]`"


def _commands():
    import typer

    from bigmodel_cli.cli.app import app

    found = {}

    def walk(command, path):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}".strip())
        else:
            found[path] = [o for p in command.params for o in [*p.opts, *getattr(p, "secondary_opts", [])]
                           if o.startswith("-")]

    walk(typer.main.get_command(app), "")
    return found


@pytest.mark.parametrize("command", sorted(_commands()))
def test_cli_md_documents_every_option_of_every_command(command):
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    head = command.split()[0]
    match = re.search(rf"^## `bigmodel {re.escape(head)}`\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/cli.md has no section '## `bigmodel {head}`'"
    section = match.group(1)
    missing = [o for o in _commands()[command] if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", section)]
    assert not missing, f"docs/cli.md, bigmodel {head}: options not documented: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_links_point_inside_the_repository(page):
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        resolved = (page.parent / target).resolve()
        assert resolved.is_relative_to(REPO), f"{page.name} links outside the repository: {target}"
        assert resolved.exists(), f"{page.name} links to a missing file: {target}"
    for path in re.findall(r"(?:\.\./)+[\w./-]+", text):  # relative paths written out, links or not
        resolved = (page.parent / path).resolve()
        assert resolved.is_relative_to(REPO) and resolved.exists(), f"{page.name} refers to {path}, outside the repo"
    for name in set(re.findall(r"\b[\w-]+\.md\b", text)):  # a page named, linked or not: one a reader has
        assert name in _repo_pages(), f"{page.name} names {name}, which is not in this repository"


@functools.cache
def _repo_pages() -> frozenset[str]:
    """Names of the .md files of the repository (virtual environments, hidden and generated folders left out)."""
    names = set()
    for _root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("data", "runs", "build", "node_modules")]
        names.update(f for f in files if f.endswith(".md"))
    return frozenset(names)


def test_readme_is_a_front_door():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 170, "README.md is the front door; the reference belongs in docs/"
    for command in ("make demo", "make test", "bigmodel prepare-data", "bigmodel train", "bigmodel eval",
                    "bigmodel export", "bigmodel serve", "bigmodel benchmark", "bigmodel info", "bigmodel recipes"):
        assert command in text
    for page in ("docs/cli.md", "docs/recipes.md", "docs/artifacts.md", "docs/benchmarks.md", "docs/scaling.md",
                 "docs/deploy.md"):
        assert f"]({page}" in text, f"README.md does not link {page}"
    assert not re.search(r"\d+(\.\d+)?\s*(req/s|requests/s|images/s)|\d\.\d+×", text), \
        "measured figures live in docs/benchmarks.md"
