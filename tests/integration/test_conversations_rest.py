"""The Conversations API over REST (the gateway in front of a real server, SQLite and
PostgreSQL): every answer is checked strictly against the openai SDK's own pydantic types, and
errors are OpenAI's {"error": {...}} with the status and `param` the SDK expects."""

from __future__ import annotations

import pytest
from openai.types.conversations import (
    Conversation,
    ConversationDeletedResource,
    ConversationItem,
    ConversationItemList,
)

from tests.openai_conformance import ok, openai_error

CONVERSATION, DELETED, ITEM, ITEM_LIST = (Conversation, ConversationDeletedResource, ConversationItem,
                                          ConversationItemList)

# One item of every type a conversation keeps, as a client sends them (ids and statuses left
# out where OpenAI lets a client leave them out).
ITEMS = [
    {"role": "user", "content": "What is in this picture?"},  # an "easy" message: no type
    {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "this one"},
        {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"},
        # Without a detail: stored as "auto", which the SDK's type requires.
        {"type": "input_image", "image_url": "https://example.com/b.png"},
        {"type": "input_file", "file_id": "file_1"}]},
    {"type": "message", "role": "assistant", "content": "A cat."},
    {"type": "message", "role": "developer", "content": "Be brief."},
    {"type": "message", "id": "msg_refused", "role": "assistant", "status": "completed",
     "content": [{"type": "refusal", "refusal": "I cannot."}]},
    {"type": "function_call", "call_id": "call_1", "name": "get_weather",
     "arguments": "{\"city\": \"Oslo\"}"},
    {"type": "function_call_output", "call_id": "call_1", "output": "{\"temp\": 3}"},
    {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "rain"}]},
    {"type": "file_search_call", "id": "fs_1", "queries": ["cats"], "status": "completed",
     "results": [{"file_id": "file_1", "filename": "cats.txt", "score": 0.9, "text": "Cats purr.",
                  "attributes": {"kind": "pet"}}]},
    {"type": "web_search_call", "id": "ws_1", "status": "completed",
     "action": {"type": "search", "query": "cats", "sources": []}},
    {"type": "mcp_list_tools", "id": "mcpl_1", "server_label": "docs",
     "tools": [{"name": "search", "input_schema": {"type": "object"}, "description": "Searches."}]},
    {"type": "mcp_approval_request", "id": "mcpr_1", "server_label": "docs", "name": "search",
     "arguments": "{}"},
    {"type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": True},
    {"type": "mcp_call", "id": "mcp_1", "server_label": "docs", "name": "search", "arguments": "{}",
     "output": "found", "status": "completed"},
    {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Thinking."}]},
]


async def test_every_item_type_answers_in_the_sdk_shape(http):
    created = ok(await http.post("/v1/conversations", json={"items": ITEMS[:10], "metadata": {"a": "b"}}),
                 CONVERSATION)
    assert created["object"] == "conversation" and created["metadata"] == {"a": "b"}
    cid = created["id"]
    assert ok(await http.get(f"/v1/conversations/{cid}"), CONVERSATION) == created
    appended = ok(await http.post(f"/v1/conversations/{cid}/items", json={"items": ITEMS[10:]}), ITEM_LIST)
    assert [i["type"] for i in appended["data"]] == [i["type"] for i in ITEMS[10:]]
    assert (appended["first_id"], appended["last_id"], appended["has_more"]) == (
        appended["data"][0]["id"], appended["data"][-1]["id"], False)

    listed = ok(await http.get(f"/v1/conversations/{cid}/items", params={"order": "asc", "limit": 100}),
                ITEM_LIST)
    assert listed["object"] == "list" and not listed["has_more"]
    data = listed["data"]
    assert [i.get("type", "message") for i in data] == [i.get("type", "message") for i in ITEMS]
    # What OpenAI fills in on stored items: ids, statuses, string content as a list of parts.
    assert data[0]["content"] == [{"type": "input_text", "text": "What is in this picture?"}]
    assert data[2]["content"] == [
        {"type": "output_text", "text": "A cat.", "annotations": [], "logprobs": []}]
    assert data[0]["status"] == "completed" and data[0]["id"].startswith("msg_")
    assert data[5]["id"].startswith("fc_") and data[6]["id"].startswith("fco_")
    assert data[12]["id"].startswith("mcpa_")
    assert data[7]["output"] == [{"type": "input_text", "text": "rain"}]
    assert data[4] == ITEMS[4] and data[8] == ITEMS[8]  # complete items come back unchanged

    for item in data:
        got = ok(await http.get(f"/v1/conversations/{cid}/items/{item['id']}"), ITEM)
        assert got == item
    after_delete = ok(await http.delete(f"/v1/conversations/{cid}/items/{data[0]['id']}"), CONVERSATION)
    assert after_delete == created
    deleted = ok(await http.delete(f"/v1/conversations/{cid}"), DELETED)
    assert deleted == {"object": "conversation.deleted", "id": cid, "deleted": True}


async def test_update_replaces_and_null_clears_the_metadata(http):
    cid = ok(await http.post("/v1/conversations", json={"metadata": {"a": "1"}}), CONVERSATION)["id"]
    updated = ok(await http.post(f"/v1/conversations/{cid}", json={"metadata": {"b": "2"}}), CONVERSATION)
    assert updated["metadata"] == {"b": "2"}
    # OpenAI requires the key: a body without it is refused, not taken as a clear.
    missing = await http.post(f"/v1/conversations/{cid}", json={})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "metadata"
    as_form = await http.post(f"/v1/conversations/{cid}", files={"other": (None, "x")})  # multipart
    assert as_form.status_code == 400 and as_form.json()["error"]["param"] == "metadata"
    assert ok(await http.get(f"/v1/conversations/{cid}"), CONVERSATION)["metadata"] == {"b": "2"}
    cleared = ok(await http.post(f"/v1/conversations/{cid}", json={"metadata": None}), CONVERSATION)
    assert cleared["metadata"] == {}


async def test_after_pages_both_ways_with_first_and_last_ids(http):
    items = [{"type": "message", "id": f"msg_{i}", "role": "user", "content": f"{i}"} for i in range(5)]
    cid = ok(await http.post("/v1/conversations", json={"items": items}), CONVERSATION)["id"]
    for order, ids in (("asc", ["msg_0", "msg_1", "msg_2", "msg_3", "msg_4"]),
                       ("desc", ["msg_4", "msg_3", "msg_2", "msg_1", "msg_0"])):
        seen, after = [], None
        while True:
            params = {"order": order, "limit": 2, **({"after": after} if after else {})}
            page = ok(await http.get(f"/v1/conversations/{cid}/items", params=params), ITEM_LIST)
            seen.append([i["id"] for i in page["data"]])
            assert (page["first_id"], page["last_id"]) == (seen[-1][0], seen[-1][-1])
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert seen == [ids[:2], ids[2:4], ids[4:]]


async def test_unknown_ids_are_404_not_found(http):
    cid = ok(await http.post("/v1/conversations", json={}), CONVERSATION)["id"]
    for method, path in (("GET", "/v1/conversations/conv_nope"), ("DELETE", "/v1/conversations/conv_nope"),
                         ("GET", "/v1/conversations/conv_nope/items"),
                         ("GET", f"/v1/conversations/{cid}/items/msg_nope"),
                         ("DELETE", f"/v1/conversations/{cid}/items/msg_nope")):
        error = openai_error(await http.request(method, path), 404)
        assert error["type"] == "invalid_request_error" and error["code"].endswith("_not_found")
        assert "not found" in error["message"]


@pytest.mark.parametrize("method, path, body, param", [
    ("POST", "/v1/conversations", {"items": [{"role": "user", "content": "x"}] * 21}, "items"),
    ("POST", "/v1/conversations", {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ("POST", "/v1/conversations", {"metadata": {"k": "v" * 513}}, "metadata"),
    ("POST", "/v1/conversations", {"items": [{"type": "image_generation_call", "id": "ig_1"}]},
     "items[0].type"),
    ("POST", "/v1/conversations", {"items": [{"type": "message", "role": "user"}]},
     "items[0].content"),  # as the JSON spells it, not the proto path (items[0].message.content)
    ("POST", "/v1/conversations",
     {"items": [{"role": "assistant", "content": [{"type": "input_text", "text": "a"}]}]},
     "items[0].content[0].type"),
    ("POST", "/v1/conversations",
     {"items": [{"role": "user", "content": [{"type": "output_text", "text": "a"}]}]},
     "items[0].content[0].type"),
    ("POST", "/v1/conversations", {"items": [{"type": "item_reference", "id": "msg_1"}]}, "items[0].type"),
    ("POST", "/v1/conversations", {"items": "hi"}, "items"),
    ("POST", "/v1/conversations/CID/items", {"items": []}, "items"),
    ("POST", "/v1/conversations/CID/items", {}, "items"),
    ("GET", "/v1/conversations/CID/items?limit=101", None, "limit"),
    ("GET", "/v1/conversations/CID/items?limit=-1", None, "limit"),
    ("GET", "/v1/conversations/CID/items?order=sideways", None, "order"),
    ("GET", "/v1/conversations/CID/items?after=msg_nope", None, "after"),
    ("GET", "/v1/conversations/CID/items?include[]=everything", None, "include[]"),
    ("GET", "/v1/conversations/CID/items/msg_1?include[]=everything", None, "include[]"),
])
async def test_bad_params_are_400_invalid_request_error_naming_the_param(http, method, path, body, param):
    cid = ok(await http.post("/v1/conversations", json={}), CONVERSATION)["id"]
    error = openai_error(await http.request(method, path.replace("CID", cid), json=body), 400)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
