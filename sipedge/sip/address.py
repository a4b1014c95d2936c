"""Transport endpoints: where a message came from or goes to.

An ``Endpoint`` is a value (hashable, frozen) so it can key connection tables and
transactions. ``host`` is a textual IP address (IPv6 without brackets) because it is
handed to the socket layer as is; it is not wire data.
"""

from __future__ import annotations

from typing import Final

__all__ = ["TRANSPORTS", "Endpoint", "default_port"]

#: Transports sipedge speaks, as they are spelled in Via and in config.
TRANSPORTS: Final = ("udp", "tcp", "tls")


def default_port(transport: str) -> int:
    """RFC 3261 §19.1.2: 5061 for TLS (sips), 5060 otherwise."""
    return 5061 if transport == "tls" else 5060


class Endpoint:
    """A transport address: ``udp:127.0.0.1:5060``.

    A value: ``==`` and ``hash`` compare the three fields, as a frozen dataclass's did (the
    hash is the same one, computed once: an endpoint keys the transaction, connection and
    flow tables and is hashed about a dozen times per call). A plain class with an
    explicit ``__init__`` rather than a dataclass, because mypyc compiles it natively
    (a dataclass's generated methods stay interpreted Python); the fields are ``Final``
    (read-only in the compiled core, checked by mypy everywhere).

    Attributes:
        transport: ``"udp"``, ``"tcp"`` or ``"tls"`` (lower case).
        host: an IP address literal (IPv6 without brackets) or, before resolution, a name.
        port: the port number.
    """

    __slots__ = ("_hash", "host", "port", "transport")

    transport: Final[str]
    host: Final[str]
    port: Final[int]
    _hash: Final[int]

    def __init__(self, transport: str, host: str, port: int) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self._hash = hash((transport, host, port))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Endpoint):
            return NotImplemented
        return (self._hash == other._hash and self.port == other.port
                and self.host == other.host and self.transport == other.transport)

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return (f"{type(self).__qualname__}(transport={self.transport!r}, "
                f"host={self.host!r}, port={self.port!r})")

    @property
    def is_reliable(self) -> bool:
        """True for stream transports (RFC 3261 §17: no retransmissions over TCP/TLS)."""
        return self.transport != "udp"

    @property
    def hostport(self) -> str:
        """``host:port`` with IPv6 hosts bracketed, as it appears in a Via sent-by or URI."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def via_transport(self) -> bytes:
        """The transport token of a Via header: ``UDP``, ``TCP``, ``TLS``."""
        return self.transport.upper().encode("ascii")

    def __str__(self) -> str:
        return f"{self.transport}:{self.hostport}"
