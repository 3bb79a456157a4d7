"""Path templates from google.api.http, as the gateway compiles them."""

from __future__ import annotations

import pytest

from agentd.app import SERVICES
from agentd.gateway.routes import _under, compile_template, routes_of


def test_one_segment_variables_stop_at_slashes_and_verbs():
    pattern, names = compile_template("/v1alpha/agents/{agent_id}/session/{session_id}")
    assert names == ["agent_id", "session_id"]
    matched = pattern.match("/v1alpha/agents/a1/session/s1")
    assert matched.groupdict() == {"agent_id": "a1", "session_id": "s1"}
    assert pattern.match("/v1alpha/agents/a1/x/session/s1") is None
    assert compile_template("/v1/things/{id}")[0].match("/v1/things/t1:cancel") is None


def test_rest_of_path_variables_take_slashes():
    pattern, _ = compile_template("/v1/models/{model_id=**}")
    assert pattern.match("/v1/models/org/model-1").group("model_id") == "org/model-1"


def test_nested_field_variables_are_refused_when_routes_are_built():
    with pytest.raises(ValueError, match="top-level fields"):
        compile_template("/v1/{config.name}")


def test_every_served_rpc_has_its_routes():
    routes = routes_of(SERVICES)
    served = {r.method.full_name for r in routes}
    assert served == {m.full_name for s in SERVICES for m in s.methods}
    for method in SERVICES[0].methods:  # AgentsService: the current and the deprecated prefix
        prefixes = {r.template.split("/")[1] for r in routes if r.method is method}
        assert prefixes == {"v1", "v1alpha"}, method.name


def test_the_older_agents_routes_speak_llama_stack_0_2():
    dialects = {r.template.split("/")[1]: r.json_dialect for r in routes_of(SERVICES)
                if r.method.containing_service is SERVICES[0]}
    assert dialects == {"v1": "llama_stack_0_2", "v1alpha": ""}
    assert {r.json_dialect for r in routes_of(SERVICES[1:])} == {""}


def test_a_dialect_prefix_is_matched_by_whole_segments():
    assert _under("/v1/agents", "/v1/agents") and _under("/v1/agents/{agent_id}", "/v1/agents")
    assert not _under("/v1/agentsx", "/v1/agents") and not _under("/v1alpha/agents", "/v1/agents")
