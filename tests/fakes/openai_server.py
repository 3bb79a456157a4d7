"""The scripted fake model server, re-exported from the shipped test kit
(agentd.testing.fake_openai, where the benchmark also finds it), plus its pytest fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agentd.testing.fake_openai import (
    CHAT_PATH,
    MODELS_PATH,
    FakeOpenAIServer,
    RecordedRequest,
    Reply,
    ReplySource,
    ToolCallSpec,
    Usage,
    echo_reply,
)

__all__ = [
    "CHAT_PATH",
    "MODELS_PATH",
    "FakeOpenAIServer",
    "RecordedRequest",
    "Reply",
    "ReplySource",
    "ToolCallSpec",
    "Usage",
    "echo_reply",
    "fake_openai",
]


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    """A started FakeOpenAIServer accepting any model, closed after the test."""
    with FakeOpenAIServer() as server:
        yield server
