"""Fakes of the services outside agentd, each a real server speaking that service's protocol."""
