"""Routes read from the google.api.http annotations of the served gRPC services.

Template grammar (google/api/http.proto): literal segments, `{field}` / `{field=*}` for one
segment, `{field=**}` for the rest of the path, and an optional `:verb` suffix. A `*` never
matches a ':' so "/x/{id}:cancel" and "/x/{id}" stay apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from agentd.v1 import options_pb2

_VERBS = ("get", "post", "put", "patch", "delete")
# Path variables bind top-level fields only (none of our routes needs a nested one).
_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_]*)(?:=([^}]+))?\}")


@dataclass(slots=True)
class Route:
    verb: str  # upper case
    template: str
    pattern: re.Pattern
    variables: list[str]  # field paths bound by the path, in order
    body: str  # "", "*" or a top-level field name
    response_body: str  # "" or a top-level field of the response
    method: MethodDescriptor
    error_style: int  # options_pb2.ErrorStyle
    json_dialect: str = ""  # the codec's dialect for this route (the service's json_dialects)
    grpc_path: str = field(init=False)

    def __post_init__(self) -> None:
        self.grpc_path = f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def streaming(self) -> bool:
        return self.method.server_streaming


def compile_template(template: str) -> tuple[re.Pattern, list[str]]:
    variables: list[str] = []
    out, pos = [], 0
    for m in _VARIABLE.finditer(template):
        out.append(re.escape(template[pos:m.start()]))
        name, segments = m.group(1), m.group(2) or "*"
        variables.append(name)
        if segments == "**":
            out.append(f"(?P<{name}>.+)")
        else:
            # "{name=agents/*}" style: literal parts with one-segment wildcards.
            parts = [("[^/:]+" if s == "*" else re.escape(s)) for s in segments.split("/")]
            out.append(f"(?P<{name}>{'/'.join(parts)})")
        pos = m.end()
    if "{" in _VARIABLE.sub("", template):  # e.g. {config.name}: fail at start, not per request
        raise ValueError(f"unsupported path template {template!r}: variables bind top-level fields")
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$"), variables


def _under(template: str, prefix: str) -> bool:
    """Whether the path template is the prefix or below it, segment by segment
    ("/v1/agents/{id}" is under "/v1/agents"; "/v1/agentsx" is not)."""
    return template == prefix or template.startswith(prefix.rstrip("/") + "/")


def _rules(rule: http_pb2.HttpRule):
    yield rule
    yield from rule.additional_bindings


def routes_of(services: list[ServiceDescriptor]) -> list[Route]:
    routes: list[Route] = []
    for service in services:
        style = service.GetOptions().Extensions[options_pb2.error_style]
        dialects = [d.split("=", 1) for d in service.GetOptions().Extensions[options_pb2.json_dialects]]
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            for rule in _rules(options.Extensions[annotations_pb2.http]):
                verb = rule.WhichOneof("pattern")
                if verb not in _VERBS:
                    continue
                template = getattr(rule, verb)
                pattern, variables = compile_template(template)
                dialect = next((name for prefix, name in dialects if _under(template, prefix)), "")
                routes.append(Route(verb=verb.upper(), template=template, pattern=pattern,
                                    variables=variables, body=rule.body,
                                    response_body=rule.response_body, method=method,
                                    error_style=style, json_dialect=dialect))
    return routes
