"""agentd's test kit, shipped with the package (as Temporal ships its test server): start
`agentd serve` as a subprocess on free loopback ports, wait until it is healthy, stop it.

Used by agentd's own e2e tests and benchmark, and by anyone testing a client against a real
agentd. Nothing in the server imports it.
"""

from agentd.testing.process import AGENTD, AgentdProcess, AgentdStartError, free_port, start_agentd

__all__ = ["AGENTD", "AgentdProcess", "AgentdStartError", "free_port", "start_agentd"]
