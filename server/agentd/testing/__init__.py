"""agentd's test kit, shipped with the package (as Temporal ships its test server): start
`agentd serve` as a subprocess on free loopback ports, wait until it is healthy, stop it.

Also a fake OpenAI-compatible model server (`agentd.testing.fake_openai`), scripted per
request, so that turns run against a real model endpoint without a model.

Used by agentd's own tests and benchmark, and by anyone testing a client against a real
agentd. Nothing in the server imports it.
"""

from agentd.testing.process import AGENTD, AgentdProcess, AgentdStartError, free_port, start_agentd

__all__ = ["AGENTD", "AgentdProcess", "AgentdStartError", "free_port", "start_agentd"]
