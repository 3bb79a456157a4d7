"""Page tokens and the legacy cursors the gateway folds into them."""

from __future__ import annotations

import base64
import json

import pytest

from agentd import paging
from agentd.errors import InvalidArgument


@pytest.mark.parametrize("cursor", [paging.Cursor(offset=5), paging.Cursor(after="agent_1"),
                                    paging.Cursor(before="msg_2"), paging.Cursor(),
                                    paging.Cursor(key=(5, "x"))])
def test_tokens_round_trip(cursor):
    assert paging.decode(paging.encode(cursor)) == cursor


def test_empty_token_is_the_first_page():
    assert paging.decode("") == paging.Cursor()


@pytest.mark.parametrize("token", ["garbage!", "e30=", "eyJhZnRlciI6NX0=",  # {"after": 5}
                                   "eyJvZmZzZXQiOi0xfQ=="])  # {} and {"offset": -1}
def test_foreign_tokens_are_invalid(token):
    with pytest.raises(InvalidArgument) as caught:
        paging.decode(token)
    assert caught.value.field_violations[0][0] == "page_token"


def test_page_size_defaults_caps_and_rejects_negative():
    assert paging.page_size(0) == paging.DEFAULT_PAGE_SIZE
    assert paging.page_size(5) == 5
    assert paging.page_size(10**6) == paging.MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument):
        paging.page_size(-1)


def test_legacy_cursors():
    assert paging.from_legacy("start_index", "3") == paging.Cursor(offset=3)
    assert paging.from_legacy("after", "x") == paging.Cursor(after="x")
    for name, raw in (("start_index", "-1"), ("start_index", "a"), ("after", "")):
        with pytest.raises(InvalidArgument) as caught:
            paging.from_legacy(name, raw)
        assert caught.value.field_violations[0][0] == name


def test_key_tokens_and_offset_bounds():
    cursor = paging.Cursor(key=(17, "agent_1"))
    assert paging.decode(paging.encode(cursor)) == cursor
    for bad in ({"key": [1]}, {"key": ["1", "a"]}, {"offset": paging.MAX_OFFSET + 1},
                # Forged: no column holds these, and the database refused them (a 500).
                {"key": [True, "a"]}, {"key": [2**63, "a"]}, {"key": [1, "a\u0000"]},
                {"after": "a\u0000"}):
        token = base64.urlsafe_b64encode(json.dumps(bad).encode()).decode()
        with pytest.raises(InvalidArgument):
            paging.decode(token)
    with pytest.raises(InvalidArgument) as caught:
        paging.from_legacy("start_index", "100000000000000000000")
    assert "between 0 and" in caught.value.message
