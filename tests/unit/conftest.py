"""Fixtures for the unit tests."""

from tests.fakes.openai_server import fake_openai  # noqa: F401 - the scripted model server fixture
