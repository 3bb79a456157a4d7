"""The response loop (OpenAI's Responses API): a response is a run on engine/runs.py."""

from agentd.engine.responses.engine import ResponseEngine, Started

__all__ = ["ResponseEngine", "Started"]
