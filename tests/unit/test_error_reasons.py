"""The ErrorInfo reason catalogue (errors.proto ErrorReason) is enforced: every reason the
server can produce, found by scanning its source, is a catalogued value. A new reason must be
added to the contract first; clients switch on these strings."""

from __future__ import annotations

import ast
from pathlib import Path

import grpc

import agentd
from agentd import errors
from agentd.storage import events
from agentd.v1 import errors_pb2

PACKAGE = Path(agentd.__file__).parent
CATALOGUE = {name.removeprefix("ERROR_REASON_") for name in errors_pb2.ErrorReason.keys()} - {"UNSPECIFIED"}

# NotFound sites whose resource is not a literal nor a parameter fed literals: module -> the
# resources it can name, read from the code that decides them.
DYNAMIC_RESOURCES = {
    "storage/events.py": lambda: [name for *_, name in events._RUNS.values()],
}
# Known mismatches in code this test may not change; each is its owner's to fix.
KNOWN_MISMATCHES: set[tuple[str, str]] = set()


def _literal(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


class _Scan:
    """Collects (module, reason) pairs from one module's syntax tree."""

    def __init__(self, module: str, tree: ast.Module):
        self.module, self.tree = module, tree
        self.found: set[tuple[str, str]] = set()
        self.unresolved: list[str] = []
        self.parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}

    def run(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call):
                self._call(node)
            elif isinstance(node, ast.ClassDef):
                for statement in node.body:  # class-level `reason = "..."`
                    if (isinstance(statement, ast.Assign) and any(
                            isinstance(t, ast.Name) and t.id == "reason" for t in statement.targets)):
                        self._add(_literal(statement.value), statement)
            elif isinstance(node, ast.Assign):  # `code, reason, ... = (..., "INTERNAL", ...)`
                for target in node.targets:
                    if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                        for name, value in zip(target.elts, node.value.elts, strict=False):
                            if isinstance(name, ast.Name) and name.id == "reason" and _literal(value):
                                self._add(_literal(value), node)

    def _add(self, reason: str | None, node) -> None:
        if reason is not None:
            self.found.add((self.module, reason))

    def _call(self, call: ast.Call) -> None:
        name = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", None)
        if name == "NotFound" and call.args:
            for resource in self._values(call.args[0], call):
                self._add(f"{resource.upper()}_NOT_FOUND", call)
        for keyword in call.keywords:
            if keyword.arg == "reason":
                for reason in self._values(keyword.value, call):
                    self._add(reason, call)

    def _values(self, node, site) -> list[str]:
        """A literal, or a parameter of the enclosing function: the literals its callers in
        this module pass (by position or keyword)."""
        if _literal(node) is not None:
            return [_literal(node)]
        owner = self._enclosing_class(site)
        if owner is not None and owner.name == "NotFound":
            return []  # <RESOURCE>_NOT_FOUND: counted at each NotFound(...) site
        function = self._enclosing(site)
        if isinstance(node, ast.Name) and function is not None:
            params = [a.arg for a in function.args.args]
            if node.id in params:
                index = params.index(node.id)
                callee = function.name
                if callee == "__init__":
                    callee = self._enclosing_class(function).name
                if params and params[0] == "self":
                    index -= 1
                return self._passed(callee, index, node.id)
            if node.id != "reason":  # a local `reason` is found at its assignment
                return self._dynamic(site)
            return []
        if isinstance(node, ast.Call):  # e.g. CODE_REASONS.get(...): checked on its own
            return []
        return self._dynamic(site)

    def _dynamic(self, site) -> list[str]:
        if self.module in DYNAMIC_RESOURCES:
            return DYNAMIC_RESOURCES[self.module]()
        self.unresolved.append(f"{self.module}:{site.lineno}")
        return []

    def _passed(self, callee: str, index: int, keyword: str) -> list[str]:
        values = []
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if name != callee:
                continue
            given = [k.value for k in node.keywords if k.arg == keyword]
            given += node.args[index:index + 1]
            values += [v for v in map(_literal, given) if v is not None]
        return values

    def _enclosing(self, node):
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return node
        return None

    def _enclosing_class(self, node):
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, ast.ClassDef):
                return node
        return None


def _produced() -> tuple[set[tuple[str, str]], list[str]]:
    found, unresolved = set(), []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        if module.startswith("v1/"):
            continue
        scan = _Scan(module, ast.parse(path.read_text()))
        scan.run()
        found |= scan.found
        unresolved += scan.unresolved
    return found, unresolved


def test_the_scan_finds_the_reasons_it_must():
    """Guards the scanner itself: a few reasons known to be produced, by each route."""
    found, _ = _produced()
    reasons = {reason for _, reason in found}
    assert {"AGENT_NOT_FOUND", "SESSION_NOT_FOUND", "TURN_NOT_FOUND", "SHIELD_NOT_FOUND",
            "TOOL_NOT_FOUND", "RESPONSE_NOT_FOUND", "INVALID_ARGUMENT", "INVALID_JSON",
            "DATABASE_UNAVAILABLE", "NOT_AVAILABLE_YET", "INTERNAL", "METHOD_NOT_ALLOWED",
            "REQUEST_TOO_LARGE"} <= reasons


def test_every_reason_the_server_produces_is_catalogued():
    found, unresolved = _produced()
    assert unresolved == [], "reasons the scan cannot resolve; add them to DYNAMIC_RESOURCES"
    wrong = {(module, reason) for module, reason in found if reason not in CATALOGUE}
    assert wrong - KNOWN_MISMATCHES == set()


def test_a_status_errors_code_maps_to_a_catalogued_reason():
    """context.abort() in an in-process call raises StatusError: its reason is catalogued
    whatever the code."""
    assert set(errors.CODE_REASONS.values()) <= CATALOGUE
    for code in grpc.StatusCode:
        error = errors.StatusError(code, "x")
        reason, _ = errors.details_of(errors.status_of(error))
        assert reason in CATALOGUE, code
    assert errors.StatusError(grpc.StatusCode.UNIMPLEMENTED, "x").reason == "NOT_AVAILABLE_YET"
    assert errors.StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "x").reason == "DEADLINE_EXCEEDED"
    assert errors.StatusError(grpc.StatusCode.NOT_FOUND, "x").reason == "INTERNAL"


def test_unbuilt_rpcs_and_bare_exceptions_have_catalogued_reasons():
    assert errors.details_of(errors.status_of(NotImplementedError()))[0] == "NOT_AVAILABLE_YET"
    assert errors.details_of(errors.status_of(KeyError("x")))[0] == "INTERNAL"


def test_the_scan_sees_each_way_a_reason_is_given():
    source = '''
class Widgety(AgentdError):
    reason = "CLASS_LEVEL"
class Wrapper(AgentdError):
    def __init__(self, http, reason):
        super().__init__("m", reason=reason)
def f(kind):
    raise NotFound(kind, "x")
f("widget")
raise NotFound("gadget", "g")
raise Unavailable("m", reason="KEYWORD")
raise Wrapper(500, "POSITIONAL")
code, reason = (1, "UNPACKED")
'''
    scan = _Scan("x.py", ast.parse(source))
    scan.run()
    assert {r for _, r in scan.found} == {"CLASS_LEVEL", "WIDGET_NOT_FOUND", "GADGET_NOT_FOUND",
                                          "KEYWORD", "POSITIONAL", "UNPACKED"}
    assert scan.unresolved == []
