"""OpenAI's limits on `metadata` (conversations; responses have the same): at most 16 keys,
keys of at most 64 characters, values of at most 512."""

from __future__ import annotations

from collections.abc import Mapping

from agentd.errors import InvalidArgument

MAX_KEYS = 16
MAX_KEY_LENGTH = 64
MAX_VALUE_LENGTH = 512


def check_metadata(metadata: Mapping[str, str], field: str = "metadata") -> None:
    # Errors name the field itself, as OpenAI's `param` does, and the key in the message.
    if len(metadata) > MAX_KEYS:
        raise InvalidArgument(field, f"at most {MAX_KEYS} keys, got {len(metadata)}")
    for key, value in metadata.items():
        if len(key) > MAX_KEY_LENGTH:
            raise InvalidArgument(
                field, f"key '{key[:MAX_KEY_LENGTH]}...' is longer than {MAX_KEY_LENGTH} characters")
        if len(value) > MAX_VALUE_LENGTH:
            raise InvalidArgument(field, f"the value of '{key}' is longer than {MAX_VALUE_LENGTH} characters")
