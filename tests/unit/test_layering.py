"""The dependency rule (DESIGN.md §4): api -> engine -> {inference, tools, storage, ...} ->
{errors, ids, context, clock, paging}. Checked on the import statements, so a wrong import
fails here rather than surfacing later as an import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import agentd

PACKAGE = Path(agentd.__file__).parent
FOUNDATION = {"errors", "ids", "context", "clock", "paging"}
# Only these may import the transports (api/, gateway/); gateway dispatches through api.calls.
MAY_IMPORT_TRANSPORTS = {"app", "cli", "api", "gateway"}


def _imports() -> dict[str, set[str]]:
    """Module (dotted, relative to agentd) -> the agentd modules it imports."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        if rel.parts[0] == "v1":
            continue
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "agentd":
                    names.update(a.name for a in node.names)
                elif node.module.startswith("agentd."):
                    names.add(node.module.removeprefix("agentd."))
            elif isinstance(node, ast.Import):
                names.update(a.name.removeprefix("agentd.") for a in node.names
                             if a.name.startswith("agentd."))
        found[".".join(rel.parts)] = names
    return found


def test_nothing_below_the_transports_imports_them():
    wrong = {module: sorted(i for i in imported if i.split(".")[0] in ("api", "gateway"))
             for module, imported in _imports().items()
             if module.split(".")[0] not in MAY_IMPORT_TRANSPORTS}
    assert {m: i for m, i in wrong.items() if i} == {}


def test_api_does_not_import_the_gateway():
    wrong = {m: sorted(i for i in imported if i.startswith("gateway"))
             for m, imported in _imports().items() if m.startswith("api")}
    assert {m: i for m, i in wrong.items() if i} == {}


def test_the_foundation_imports_only_the_foundation():
    wrong = {m: sorted(i for i in imported if i.split(".")[0] not in FOUNDATION | {"v1"})
             for m, imported in _imports().items() if m in FOUNDATION}
    assert {m: i for m, i in wrong.items() if i} == {}


def test_the_benchmark_does_not_import_the_tests():
    """bench/ starts agentd through the shipped test kit (agentd.testing), not tests/."""
    bench = Path(__file__).resolve().parents[2] / "bench"
    for path in bench.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("tests"), path
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("tests") for a in node.names), path


def test_the_engine_and_below_do_not_speak_grpc():
    """DESIGN.md §4: engine/ (and what it stands on) takes plain arguments and raises agentd
    errors; only errors.py maps them to gRPC codes, and only api/ and app.py touch grpc."""
    transport_free = ("engine", "inference", "tools", "storage")
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] not in transport_free:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            wrong += [f"{rel}: {n}" for n in names if n == "grpc" or n.startswith("grpc.")]
    assert wrong == []
