"""Images in what the model is sent: the image items of a turn's user messages and the
input_image parts of a response's user messages. Each becomes an `image_url` part of the
chat-completions message, as in Llama Stack: a URL goes as it is given (the model's server
fetches it, or reads a data: URL), inline data as a data: URL whose media type is read from
the image's first bytes.

They are checked when a request arrives (INVALID_ARGUMENT naming the field), so that what is
stored always converts, cheaply, when it is sent again with a later turn or response.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import urlsplit

from agentd.errors import InvalidArgument
from agentd.v1 import agent_messages_pb2 as msg

# The image formats vision models take, by their first bytes.
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"GIF87a", "gif"),
               (b"GIF89a", "gif"))
# The headers of a data: URL a model's server reads, by format: exactly these (vLLM takes no
# other parameter than ;base64, llama.cpp's server only a lowercase data:image/).
_DATA_HEADERS = {"data:image/png;base64": "png", "data:image/jpeg;base64": "jpeg",
                 "data:image/jpg;base64": "jpeg", "data:image/gif;base64": "gif",
                 "data:image/webp;base64": "webp"}
_FORMATS = "a PNG, JPEG, GIF or WebP image"


def image_format(data: bytes) -> str | None:
    """png, jpeg, gif or webp, from the image's first bytes; None for anything else."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def inline_image(data: str, where: str) -> str:
    """Inline image data in the standard base64 alphabet, padded, on one line: clients send it
    wrapped in lines, URL-safe or unpadded too (Llama Stack decodes them all). INVALID_ARGUMENT
    unless it is an image of a format a model takes."""
    text = "".join(data.split()).replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        image = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(where, "not base64: an image's data is its bytes in base64") from None
    if image_format(image) is None:
        raise InvalidArgument(where, f"not {_FORMATS}")
    return text


def data_url(data: str) -> str:
    """The data: URL of inline data that inline_image returned (its type read from its first
    bytes)."""
    return f"data:image/{image_format(base64.b64decode(data[:24]))};base64,{data}"


def checked_url(url: str, where: str) -> str:
    """An image's URL as it is given, if a model's server can read it: http(s) with a host, or
    a data: URL of an image in base64 whose media type is its format's."""
    if url[:5].lower() == "data:":
        return _checked_data_url(url, where)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not one
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(where, "an image URL is http(s)://host[:port]/... or a data: URL")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7f for c in url):
        raise InvalidArgument(where, "an image URL has no spaces or control characters (percent-encode them)")
    return url


def _checked_data_url(url: str, where: str) -> str:
    header, comma, payload = url.partition(",")
    if not comma or header not in _DATA_HEADERS:
        raise InvalidArgument(where, "a data: URL of an image is data:image/<png|jpeg|gif|webp>;base64,"
                                     "<data>, lowercase, with no other parameter")
    try:
        image = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(where, "the data: URL's data is not base64 (standard, padded, "
                                     "on one line)") from None
    found = image_format(image)
    if found != _DATA_HEADERS[header]:
        raise InvalidArgument(where, f"the data: URL's data is not {_FORMATS} of its media type "
                                     f"{header[5:-7]}" + (f" (it is {found})" if found else ""))
    return url


def check_agent_image(image: msg.AgentImage, where: str) -> None:
    """A turn's image: its url (checked_url) or its data (inline_image, kept in the standard
    form it is sent in), one of them; INVALID_ARGUMENT naming `where`.url.uri or .data."""
    if image.HasField("url") == image.HasField("data"):
        raise InvalidArgument(where, "an image is given by its url or by its data (base64): one of them")
    if image.HasField("url"):
        checked_url(image.url.uri, where + ".url.uri")
    else:
        image.data = inline_image(image.data, where + ".data")


def agent_image_url(image: msg.AgentImage) -> str | None:
    """The URL a stored turn's image is sent as; None for one no model's server could read
    (turns stored before images were checked held any image, and left it out then)."""
    try:
        if image.HasField("url") == image.HasField("data"):
            return None
        if image.HasField("url"):
            return checked_url(image.url.uri, "")
        return data_url(inline_image(image.data, ""))
    except InvalidArgument:
        return None
