"""inference/ sits below the engine (DESIGN.md §4): it imports the foundation, the v1 protos
and itself at run time, nothing else; settings only for type hints (the registry reads them,
the caller hands them over)."""

from __future__ import annotations

import ast
from pathlib import Path

import agentd

INFERENCE = Path(agentd.__file__).parent / "inference"
ALLOWED = {"errors", "ids", "context", "clock", "paging", "v1", "inference"}


def _runtime_imports(tree: ast.Module) -> set[str]:
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                 and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                 for n in ast.walk(node)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("agentd."):
            names.add(node.module.removeprefix("agentd.").split(".")[0])
        elif isinstance(node, ast.Import):
            names |= {a.name.removeprefix("agentd.").split(".")[0] for a in node.names
                      if a.name.startswith("agentd.")}
    return names


def test_inference_imports_only_the_foundation_and_the_protos():
    wrong = {path.name: sorted(_runtime_imports(ast.parse(path.read_text())) - ALLOWED)
             for path in INFERENCE.glob("*.py")}
    assert {name: found for name, found in wrong.items() if found} == {}
