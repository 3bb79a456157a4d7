"""Images in what the model is sent: the image items of a turn's user messages and the
input_image parts of a response's user messages. Each becomes an `image_url` part of the
chat-completions message, as in Llama Stack: a URL goes as it is given (the model's server
fetches it, or reads a data: URL), inline data as a data: URL whose media type is read from
the image's first bytes.

They are checked when a request arrives (INVALID_ARGUMENT naming the field), so that what is
stored always converts when it is sent again with a later turn or response.
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


def image_format(data: bytes) -> str | None:
    """png, jpeg, gif or webp, from the image's first bytes; None for anything else."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def data_url(data: str, where: str) -> str:
    """Inline image data (base64) as a data: URL. INVALID_ARGUMENT unless it is the base64 of
    a PNG, JPEG, GIF or WebP image."""
    try:
        image = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(where, "not base64: an image's data is its bytes in base64") from None
    kind = image_format(image)
    if kind is None:
        raise InvalidArgument(where, "not a PNG, JPEG, GIF or WebP image")
    return f"data:image/{kind};base64,{data}"


def checked_url(url: str, where: str) -> str:
    """An image's URL as it is given, if a model's server can read it: http(s) with a host, or
    a data: URL of an image in base64."""
    if url[:5].lower() == "data:":
        header, comma, payload = url.partition(",")
        if not comma or not header[5:].lower().startswith("image/") or not header.lower().endswith(";base64"):
            raise InvalidArgument(where, "a data: URL of an image is data:image/<type>;base64,<data>")
        try:
            base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(where, "the data: URL's data is not base64") from None
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(where, "an image URL is http(s)://... or a data: URL")
    return url


def agent_image_url(image: msg.AgentImage, where: str) -> str:
    """The URL a turn's image is sent as: its url, or its data as a data: URL. One of the two,
    checked (INVALID_ARGUMENT naming `where`.url.uri or `where`.data)."""
    if image.HasField("url") == image.HasField("data"):
        raise InvalidArgument(where, "an image is given by its url or by its data (base64): one of them")
    if image.HasField("url"):
        return checked_url(image.url.uri, where + ".url.uri")
    return data_url(image.data, where + ".data")
