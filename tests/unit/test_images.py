"""Images on their way to a model: which URLs and which inline data a model's server can be
sent, and how much they weigh in the engines' caches."""

from __future__ import annotations

import base64

import pytest

from agentd.engine.images import (
    agent_image_url,
    check_agent_image,
    checked_url,
    data_url,
    image_format,
    inline_image,
)
from agentd.engine.responses.items import weight as transcript_weight
from agentd.engine.turns.history import input_message
from agentd.engine.turns.history import weight as history_weight
from agentd.errors import InvalidArgument
from agentd.inference import ChatMessage, ImageURL
from agentd.v1 import agent_messages_pb2 as m
from agentd.v1 import response_items_pb2 as it

IMAGES = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff\xe0", "gif": b"GIF89a",
          "webp": b"RIFF\0\0\0\0WEBPVP8 "}
PNG = IMAGES["png"] + bytes(range(250, 256)) * 20  # bytes whose base64 holds + and /


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def field_of(error: InvalidArgument) -> str:
    return error.field_violations[0][0]


@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_inline_data_becomes_a_data_url_of_its_own_type(kind):
    image = IMAGES[kind] + bytes(20)
    assert image_format(image) == kind
    assert data_url(inline_image(b64(image), "image.data")) == f"data:image/{kind};base64,{b64(image)}"


@pytest.mark.parametrize("written", [
    "\n".join(b64(PNG)[i:i + 76] for i in range(0, len(b64(PNG)), 76)),  # MIME's wrapped lines
    base64.urlsafe_b64encode(PNG).decode(),
    b64(PNG).rstrip("="),
    base64.urlsafe_b64encode(PNG).decode().rstrip("="),
])
def test_inline_data_as_clients_write_it_is_kept_in_standard_base64(written):
    assert written != b64(PNG)
    assert inline_image(written, "image.data") == b64(PNG)


@pytest.mark.parametrize("data", ["", "not base64!", "abcde", b64(b"%PDF-1.7 not an image")])
def test_data_that_is_not_an_image_in_base64_is_invalid(data):
    with pytest.raises(InvalidArgument) as caught:
        inline_image(data, "image.data")
    assert field_of(caught.value) == "image.data"


@pytest.mark.parametrize("url", ["https://example.com/a.png", "http://127.0.0.1:8000/a.jpg?size=2",
                                 "HTTPS://example.com/a%20b.png", "data:image/png;base64," + b64(PNG),
                                 "data:image/jpg;base64," + b64(IMAGES["jpeg"]),
                                 "data:image/webp;base64," + b64(IMAGES["webp"])])
def test_urls_a_models_server_can_read_are_sent_as_given(url):
    assert checked_url(url, "image_url") == url


@pytest.mark.parametrize("url", [
    "", "ftp://x/a.png", "file:///etc/passwd", "https://", "http://[::1", "x.png",
    "http://exa mple.com/a.png", "https://example.com/a\n.png", "http://h:abc/a.png", "http://h:99999/a.png",
    # Only the header every model server reads: vLLM takes no other parameter, llama.cpp's
    # server only lowercase.
    "DATA:image/png;BASE64," + b64(PNG), "data:image/webp;charset=utf-8;base64," + b64(IMAGES["webp"]),
    "data:image/png;name=a.png;base64," + b64(PNG),
    "data:image/png," + b64(PNG), "data:text/plain;base64,aGk=", "data:image/png;base64,%%%",
    "data:image/png;base64", "data:image/;base64," + b64(PNG),
    "data:image/svg+xml;base64," + b64(b"<svg/>"),
    "data:image/png;base64," + b64(b"hello"),  # not an image
    "data:image/png;base64," + b64(IMAGES["jpeg"]),  # an image of another type
])
def test_other_urls_are_invalid(url):
    with pytest.raises(InvalidArgument) as caught:
        checked_url(url, "image_url")
    assert field_of(caught.value) == "image_url"


def test_an_agent_image_is_its_url_or_its_data_one_of_them():
    by_url = m.AgentImage(url=m.AgentURL(uri="https://x/a.png"))
    check_agent_image(by_url, "i")
    assert agent_image_url(by_url) == "https://x/a.png"
    by_data = m.AgentImage(data=base64.urlsafe_b64encode(PNG).decode())
    check_agent_image(by_data, "i")
    assert by_data.data == b64(PNG)  # kept as it is sent
    assert agent_image_url(by_data) == "data:image/png;base64," + b64(PNG)
    both = m.AgentImage(url=m.AgentURL(uri="https://x/a.png"), data=b64(PNG))
    for neither_or_both in (m.AgentImage(), both):
        with pytest.raises(InvalidArgument) as caught:
            check_agent_image(neither_or_both, "i")
        assert field_of(caught.value) == "i"


@pytest.mark.parametrize("image", [
    m.AgentImage(), m.AgentImage(data="hello"), m.AgentImage(data=b64(b"not an image")),
    m.AgentImage(url=m.AgentURL(uri="file:///etc/passwd")),
])
def test_an_image_no_model_could_read_in_a_turn_stored_before_the_checks_is_left_out(image):
    # Contract v1 took any image and dropped it; such turns are still in sessions' histories.
    assert agent_image_url(image) is None
    items = [m.InterleavedContentItem(text=m.TextContentItem(text="look")),
             m.InterleavedContentItem(image=m.ImageContentItem(image=image))]
    stored = m.TurnInputMessage(user=m.UserMessage(content=m.InterleavedContent(
        items=m.InterleavedContentItemList(items=items))))
    assert input_message(stored).parts == ("look",)


def test_an_image_weighs_its_kilobytes_in_the_caches():
    # A cache bounded by message count alone would keep 100,000 inline images. A history
    # message holds its image twice (its URL, and the JSON it is sent as).
    url = "data:image/png;base64," + "A" * 8192
    messages = [ChatMessage("user", "hi"), ChatMessage("user", "look", parts=("look", ImageURL(url)))]
    assert history_weight(messages) == 2 + 2 * len(url) // 1024
    items = [it.ResponseItem(message=it.ResponseMessage(content=it.ResponseMessageContent(
        parts=it.ResponseContentPartList(parts=[
            it.ResponseContentPart(input_text=it.ResponseInputText(text="look")),
            it.ResponseContentPart(input_image=it.ResponseInputImage(image_url=url))])))),
        it.ResponseItem(message=it.ResponseMessage(content=it.ResponseMessageContent(text="hi")))]
    assert transcript_weight(items) == 2 + len(url) // 1024
