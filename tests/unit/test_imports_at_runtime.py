"""The dependency rule, checked on what each module really imports at run time (in a fresh
interpreter): the import statements are checked in test_layering.py."""

from __future__ import annotations

import subprocess
import sys

import pytest


def modules_loaded_by(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module, forbidden", [
    ("agentd.errors", "sqlalchemy"),            # storage translates its own errors
    ("agentd.config", "agentd.storage"),        # configuration validates URLs on its own
    ("agentd.storage.agents", "agentd.api"),    # storage never reaches up to the servicers
    ("agentd.storage.events", "agentd.api"),
    ("agentd.storage.responses", "agentd.api"),
    ("agentd.storage.conversations", "agentd.api"),
])
def test_module_does_not_import(module, forbidden):
    loaded = modules_loaded_by(module)
    assert not {m for m in loaded if m == forbidden or m.startswith(forbidden + ".")}
