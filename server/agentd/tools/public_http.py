"""HTTP to URLs a caller chose (a turn's document URLs, later other fetches on a caller's
behalf): public addresses only, so a request cannot make agentd reach its own host, the
cluster's private network or a cloud metadata endpoint.

The check sits in the connection itself (an httpcore network backend): the host is resolved
once, every address it resolves to must be public, and the socket is opened to one of those
checked addresses, so DNS cannot answer the check with one address and the connect with
another (rebinding). Every connection of the client goes through it, redirects included. TLS
still verifies the certificate against the URL's host name. Proxy variables from the
environment are ignored: a proxy would connect on agentd's behalf, past the check.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedAddress(Exception):
    """The URL's host is, or resolves to, an address that is not public."""

    def __init__(self, host: str, address: IPAddress, kind: str):
        super().__init__(f"{host} resolves to {address}, a {kind} address")
        self.host = host
        self.address = address
        self.kind = kind


def non_public_kind(address: IPAddress) -> str | None:
    """What makes `address` not public ("loopback", "private", ...), or None if it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    # Most specific first: loopback and link-local ranges are "private" to ipaddress too.
    kinds = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", not address.is_global),  # shared (100.64/10), documentation, ...
    )
    return next((kind for kind, matches in kinds if matches), None)


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def public_address(host: str, port: int) -> str:
    """The address to connect to for host: the first it resolves to, once every one of them
    is public (else RefusedAddress; an unknown host raises what getaddrinfo raises)."""
    addresses = await _resolve(host, port)
    for address in addresses:
        kind = non_public_kind(address)
        if kind is not None:
            raise RefusedAddress(host, address, kind)
    return str(addresses[0])


class _PublicOnlyBackend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self._sockets = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):  # the connect timeout covers the resolution too
                address = await public_address(host, port)
        except TimeoutError as e:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from e
        except OSError as e:  # unknown host: httpx reports it as a connect error
            raise httpcore.ConnectError(str(e)) from e
        return await self._sockets.connect_tcp(
            address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not public addresses")

    async def sleep(self, seconds: float) -> None:
        await self._sockets.sleep(seconds)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context for every fetch: building one reads the CA bundle from disk, which a
    fetch (on the event loop) should not do each time."""
    return httpx.create_ssl_context(trust_env=False)


class _PublicOnlyTransport(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__(verify=_ssl_context(), trust_env=False)
        # httpx builds its httpcore pool without a way to pass a network backend: the same
        # pool, with the backend that checks every address before it connects.
        self._pool = httpcore.AsyncConnectionPool(ssl_context=_ssl_context(),
                                                  network_backend=_PublicOnlyBackend())


def http_client(*, allow_private: bool, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client for caller-chosen URLs: public addresses only (RefusedAddress is raised
    from the request otherwise) unless `allow_private` (configuration's choice, e.g. for a
    deployment whose documents live on its private network, and for tests)."""
    if allow_private:
        return httpx.AsyncClient(**kwargs)
    return httpx.AsyncClient(transport=_PublicOnlyTransport(), trust_env=False, **kwargs)
