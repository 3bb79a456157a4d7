"""The public-address guard of caller-chosen URLs (tools/public_http.py): which addresses are
refused, and that the connection goes to the address that was checked, not to a second
resolution of the name (the resolver is the operating system's, replaced here by a scripted
one; the socket layer by one that records where it was asked to connect)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from agentd.tools import public_http
from agentd.tools.public_http import RefusedAddress, non_public_kind, public_address


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.9.9.9", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "reserved"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_what_is_not_public(address, kind):
    assert non_public_kind(ipaddress.ip_address(address)) == kind


async def test_a_name_is_refused_when_any_of_its_addresses_is_not_public(monkeypatch):
    loop = asyncio.get_running_loop()

    async def resolve(host, port, **kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port)),
        ]

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    with pytest.raises(RefusedAddress) as caught:
        await public_address("mixed.example", 80)
    assert str(caught.value) == "mixed.example resolves to 10.0.0.7, a private address"


async def test_the_connection_goes_to_the_checked_address(monkeypatch):
    loop = asyncio.get_running_loop()
    answers = iter(["93.184.216.34", "127.0.0.1"])  # a rebinding resolver: public, then loopback

    async def resolve(host, port, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    connected: list[str] = []

    class RecordingSockets:

        async def connect_tcp(self, host, port, **kwargs):
            connected.append(host)
            return "stream"

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    backend = public_http._PublicOnlyBackend()
    backend._sockets = RecordingSockets()
    assert await backend.connect_tcp("docs.example", 443) == "stream"
    assert connected == ["93.184.216.34"]
    with pytest.raises(RefusedAddress):  # the next connection resolves again, and is checked again
        await backend.connect_tcp("docs.example", 443)
    assert connected == ["93.184.216.34"]
