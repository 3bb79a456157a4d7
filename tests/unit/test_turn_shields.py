"""How the turn engine handles what a shield finds, through the Shields interface
(engine/shields.py) with a small keyword implementation written here: a blocking violation
completes the turn with its refusal (no error), a non-blocking one is only logged, and a
refused turn does not poison the session's later history. The rest is real: agentd on SQLite,
the scripted fake model."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import pytest_asyncio

from agentd.engine.shields import DeclaredShields, ShieldViolation, require_declared
from agentd.errors import NotFound
from agentd.inference import ChatMessage
from agentd.v1 import agent_messages_pb2 as m
from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import safety_pb2
from tests.conftest import fake_model_providers, make_settings, running
from tests.fakes.openai_server import Reply, ToolCallSpec
from tests.integration.test_turns import (
    collect,
    kinds,
    new_session,
    stream_turn,
    terminal_turn,
    tool_def,
    user,
)


class KeywordShields:
    """guard-in flags any user message with "forbidden"; guard-out any answer with "secret"."""

    declared = frozenset({"guard-in", "guard-out"})

    def __init__(self, level: str = "error", user_message: str | None = "I can't answer that."):
        self.level = level
        self.user_message = user_message
        self.checked: list[tuple[tuple[str, ...], list[str]]] = []

    async def check(
        self, shield_ids: Sequence[str], messages: Sequence[ChatMessage]
    ) -> ShieldViolation | None:
        self.checked.append((tuple(shield_ids), [f"{x.role}:{x.content}" for x in messages]))
        for shield_id in shield_ids:
            role, word = ("user", "forbidden") if shield_id == "guard-in" else ("assistant", "secret")
            if any(x.role == role and word in (x.content or "") for x in messages):
                return ShieldViolation(shield_id, self.level, self.user_message, {"violation_type": "S1"})
        return None


@pytest_asyncio.fixture
async def agentd(tmp_path, fake_openai):
    """The shared agentd fixture (and so `agents`) on SQLite, its turns checked by KeywordShields."""
    settings = make_settings(
        f"sqlite:///{tmp_path / 'agentd.db'}", tmp_path, providers=fake_model_providers(fake_openai)
    )
    async with running(settings) as server:
        server.turns.shields = KeywordShields()
        yield server


def model_saw(fake, n: int) -> list[tuple[str, str]]:
    return [(x["role"], x.get("content") or "") for x in fake.chat_requests[n].body["messages"]]


async def test_an_input_violation_completes_the_turn_with_the_refusal_and_no_inference(agents, fake_openai):
    agent_id, session_id = await new_session(agents, input_shields=["guard-in"], output_shields=["guard-out"])
    events = await collect(stream_turn(agents, agent_id, session_id, user("something forbidden")))
    assert kinds(events) == [
        "turn_start",
        "step_start:shield_call",
        "step_complete:shield_call",
        "turn_complete",
    ]
    turn = terminal_turn(events)
    assert turn.status == t.TURN_STATUS_COMPLETED and turn.stop_reason == t.TURN_STOP_REASON_SHIELD_VIOLATION
    assert turn.output_message.content.text == "I can't answer that."
    assert turn.output_message.stop_reason == m.STOP_REASON_END_OF_TURN and not turn.output_message.tool_calls
    (step,) = turn.steps
    assert step.shield_call.shield_id == "guard-in"
    assert step.shield_call.touchpoint == t.SHIELD_TOUCHPOINT_USER_INPUT
    assert step.shield_call.violation.violation_level == safety_pb2.VIOLATION_LEVEL_ERROR
    assert step.shield_call.violation.user_message == "I can't answer that."
    assert dict(step.shield_call.violation.metadata) == {"violation_type": "S1"}
    assert fake_openai.chat_requests == []
    # The session is not poisoned: the next turn's history has neither the flagged input nor
    # the refusal, so the input shield passes and the model sees only the new message.
    fake_openai.script(Reply(text="Hello"))
    events = await collect(stream_turn(agents, agent_id, session_id, user("hi")))
    assert terminal_turn(events).output_message.content.text == "Hello"
    assert model_saw(fake_openai, 0) == [("system", "Be brief."), ("user", "hi")]


async def test_an_output_violation_replaces_the_answer_which_later_turns_do_not_see(agents, fake_openai):
    fake_openai.script(Reply(text="the secret is 42"), Reply(text="ok"))
    agent_id, session_id = await new_session(agents, output_shields=["guard-out"])
    events = await collect(stream_turn(agents, agent_id, session_id, user("tell me")))
    assert [k for k in kinds(events) if not k.startswith("step_progress")] == [
        "turn_start",
        "step_start:inference",
        "step_complete:inference",
        "step_start:shield_call",
        "step_complete:shield_call",
        "turn_complete",
    ]
    turn = terminal_turn(events)
    assert turn.stop_reason == t.TURN_STOP_REASON_SHIELD_VIOLATION
    assert turn.output_message.content.text == "I can't answer that."
    # The inference step keeps what the model said; the history sends the refusal instead.
    assert turn.steps[0].inference.model_response.content.text == "the secret is 42"
    await collect(stream_turn(agents, agent_id, session_id, user("again")))
    assert model_saw(fake_openai, 1) == [
        ("system", "Be brief."),
        ("user", "tell me"),
        ("assistant", "I can't answer that."),
        ("user", "again"),
    ]


async def test_an_output_violation_on_client_calls_completes_instead_of_pausing(agents, fake_openai):
    fake_openai.script(
        Reply(text="secret plan", tool_calls=[ToolCallSpec("get_weather", {"city": "X"}, id="c1")])
    )
    agent_id, session_id = await new_session(
        agents, output_shields=["guard-out"], client_tools=[tool_def("get_weather")]
    )
    events = await collect(stream_turn(agents, agent_id, session_id, user("go")))
    assert kinds(events)[-1] == "turn_complete"
    turn = terminal_turn(events)
    assert turn.status == t.TURN_STATUS_COMPLETED and turn.stop_reason == t.TURN_STOP_REASON_SHIELD_VIOLATION
    assert not turn.output_message.tool_calls


async def test_a_non_blocking_violation_is_not_recorded_and_the_turn_goes_on(agentd, agents, fake_openai):
    agentd.turns.shields = KeywordShields(level="warn")
    fake_openai.script(Reply(text="fine"))
    agent_id, session_id = await new_session(agents, input_shields=["guard-in"])
    events = await collect(stream_turn(agents, agent_id, session_id, user("forbidden but harmless")))
    turn = terminal_turn(events)
    assert turn.stop_reason == t.TURN_STOP_REASON_END_OF_TURN and turn.output_message.content.text == "fine"
    assert not turn.steps[0].shield_call.HasField("violation")
    assert turn.steps[0].shield_call.shield_id == "guard-in"


async def test_a_violation_without_a_message_gets_a_plain_refusal(agentd, agents, fake_openai):
    agentd.turns.shields = KeywordShields(user_message=None)
    agent_id, session_id = await new_session(agents, input_shields=["guard-in"])
    turn = terminal_turn(await collect(stream_turn(agents, agent_id, session_id, user("forbidden"))))
    assert turn.output_message.content.text == "I can't help with that: shield 'guard-in' blocked it."
    assert not turn.steps[0].shield_call.violation.HasField("user_message")


async def test_input_shields_see_the_whole_conversation_and_output_shields_the_answer(
    agentd, agents, fake_openai
):
    shields = agentd.turns.shields
    fake_openai.script(Reply(text="one"), Reply(text="two"))
    agent_id, session_id = await new_session(agents, input_shields=["guard-in"], output_shields=["guard-out"])
    await collect(stream_turn(agents, agent_id, session_id, user("first")))
    await collect(stream_turn(agents, agent_id, session_id, user("second")))
    assert shields.checked == [
        (("guard-in",), ["system:Be brief.", "user:first"]),
        (("guard-out",), ["system:Be brief.", "user:first", "assistant:one"]),
        (("guard-in",), ["system:Be brief.", "user:first", "assistant:one", "user:second"]),
        (("guard-out",), ["system:Be brief.", "user:first", "assistant:one", "user:second", "assistant:two"]),
    ]


async def test_the_no_op_shields_know_the_declared_ids_and_never_find_a_violation():
    shields = DeclaredShields(["a", "b"])
    require_declared(shields, ["b", "a"])
    with pytest.raises(NotFound) as caught:
        require_declared(shields, ["a", "c"])
    assert caught.value.reason == "SHIELD_NOT_FOUND"
    assert await shields.check(["a"], [ChatMessage(role="user", content="anything")]) is None
