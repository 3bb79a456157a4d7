"""The engine: agent configuration rules now; the turn and response loops later."""
