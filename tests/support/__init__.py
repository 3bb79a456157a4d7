"""Helpers shared by the e2e tests and the benchmark (no pytest imports here)."""
