"""agentd: a gRPC microservice that runs LLM agents."""

__version__ = "0.1.0"
