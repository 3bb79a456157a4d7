"""Images on their way to a model: which URLs and which inline data a model's server can be
sent, and how much they weigh in the engines' caches."""

from __future__ import annotations

import base64

import pytest

from agentd.engine.images import agent_image_url, checked_url, data_url, image_format
from agentd.engine.responses.items import weight as transcript_weight
from agentd.engine.turns.history import weight as history_weight
from agentd.errors import InvalidArgument
from agentd.inference import ChatMessage, ImageURL
from agentd.v1 import agent_messages_pb2 as m
from agentd.v1 import response_items_pb2 as it

IMAGES = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff\xe0", "gif": b"GIF89a",
          "webp": b"RIFF\0\0\0\0WEBPVP8 "}


def field_of(error: InvalidArgument) -> str:
    return error.field_violations[0][0]


@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_inline_data_becomes_a_data_url_of_its_own_type(kind):
    data = base64.b64encode(IMAGES[kind] + bytes(20)).decode()
    assert image_format(IMAGES[kind] + bytes(20)) == kind
    assert data_url(data, "image.data") == f"data:image/{kind};base64,{data}"


@pytest.mark.parametrize("data", ["", "not base64!", base64.b64encode(b"%PDF-1.7 not an image").decode()])
def test_data_that_is_not_an_image_in_base64_is_invalid(data):
    with pytest.raises(InvalidArgument) as caught:
        data_url(data, "image.data")
    assert field_of(caught.value) == "image.data"


@pytest.mark.parametrize("url", ["https://example.com/a.png", "http://127.0.0.1:8000/a.jpg?size=2",
                                 "DATA:image/png;BASE64,iVBORw0KGgo=", "data:image/webp;base64,"])
def test_urls_a_models_server_can_read_are_sent_as_given(url):
    assert checked_url(url, "image_url") == url


@pytest.mark.parametrize("url", ["", "ftp://x/a.png", "file:///etc/passwd", "https://", "http://[::1",
                                 "x.png", "data:image/png,raw", "data:text/plain;base64,aGk=",
                                 "data:image/png;base64,%%%", "data:image/png;base64"])
def test_other_urls_are_invalid(url):
    with pytest.raises(InvalidArgument) as caught:
        checked_url(url, "image_url")
    assert field_of(caught.value) == "image_url"


def test_an_agent_image_is_its_url_or_its_data_one_of_them():
    png = base64.b64encode(IMAGES["png"]).decode()
    assert agent_image_url(m.AgentImage(url=m.AgentURL(uri="https://x/a.png")), "i") == "https://x/a.png"
    assert agent_image_url(m.AgentImage(data=png), "i") == "data:image/png;base64," + png
    for neither_or_both in (m.AgentImage(), m.AgentImage(url=m.AgentURL(uri="https://x/a.png"), data=png)):
        with pytest.raises(InvalidArgument) as caught:
            agent_image_url(neither_or_both, "i")
        assert field_of(caught.value) == "i"


def test_an_image_weighs_its_kilobytes_in_the_caches():
    # A cache bounded by message count alone would keep 100,000 inline images.
    url = "data:image/png;base64," + "A" * 8192
    messages = [ChatMessage("user", "hi"), ChatMessage("user", "look", parts=("look", ImageURL(url)))]
    assert history_weight(messages) == 2 + len(url) // 1024
    items = [it.ResponseItem(message=it.ResponseMessage(content=it.ResponseMessageContent(
        parts=it.ResponseContentPartList(parts=[
            it.ResponseContentPart(input_text=it.ResponseInputText(text="look")),
            it.ResponseContentPart(input_image=it.ResponseInputImage(image_url=url))])))),
        it.ResponseItem(message=it.ResponseMessage(content=it.ResponseMessageContent(text="hi")))]
    assert transcript_weight(items) == 2 + len(url) // 1024
