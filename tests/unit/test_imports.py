"""Import structure: no cycle anywhere in the package, the lower floors never import the training loop, and
export formats are independent of each other.

Every `import` in the package is read (function-level ones too, which a lazy import only hides)."""

import ast
import copy
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "bigmodel_cli"
LOWER_FLOORS = ("evaluation", "export", "serving", "inference", "models", "data")
FORMATS = ["bigmodel_cli.export.onnx_graph", "bigmodel_cli.export.quantize", "bigmodel_cli.export.torchscript"]


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its source (a copy the caller may change)."""
    return copy.deepcopy(_parsed())


@functools.cache
def _parsed() -> dict[str, set[str]]:
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def reaches(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A path of imports from start to goal, if there is one."""
    seen, todo = {start}, [[start]]
    while todo:
        path = todo.pop()
        for nxt in graph[path[-1]]:
            if nxt == goal:
                return path + [nxt]
            if nxt not in seen:
                seen.add(nxt)
                todo.append(path + [nxt])
    return None


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    cycles = []
    for module in sorted(graph):
        for direct in graph[module]:
            back = reaches(graph, direct, module)
            if back:
                cycles.append(" -> ".join([module, *back]))
    assert cycles == []


@pytest.mark.parametrize("floor", LOWER_FLOORS)
def test_lower_floors_never_import_the_training_loop(floor):
    graph = import_graph()
    offenders = [(m, t) for m, targets in graph.items() if m.startswith(f"bigmodel_cli.{floor}")
                 for t in targets if t.startswith("bigmodel_cli.training")]
    assert offenders == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_formats_do_not_import_each_other_or_the_engine(fmt):
    graph = import_graph()
    others = [m for m in FORMATS if m != fmt] + ["bigmodel_cli.export.onnx_export", "bigmodel_cli.export.benchmark"]
    assert [m for m in others if reaches(graph, fmt, m)] == []


def test_the_checker_sees_a_cycle():
    """The graph is real: the old torchscript -> onnx_export -> torchscript import would be found."""
    graph = import_graph()
    graph["bigmodel_cli.export.torchscript"].add("bigmodel_cli.export.onnx_export")
    assert reaches(graph, "bigmodel_cli.export.onnx_export", "bigmodel_cli.export.onnx_export")
    assert reaches(graph, "bigmodel_cli.export.quantize", "bigmodel_cli.export.verify") is None
    assert reaches(graph, "bigmodel_cli.evaluation.evaluate", "bigmodel_cli.inference.session")
