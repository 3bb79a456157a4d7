"""The turn engine (issue 6): turns as runs, the inference/tool loop, pause and resume."""

from agentd.engine.turns.engine import TurnEngine

__all__ = ["TurnEngine"]
