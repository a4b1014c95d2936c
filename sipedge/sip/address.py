"""Transport endpoints: where a message came from or goes to.

An ``Endpoint`` is a value (hashable, frozen) so it can key connection tables and
transactions. ``host`` is a textual IP address (IPv6 without brackets) because it is
handed to the socket layer as is; it is not wire data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["TRANSPORTS", "Endpoint", "default_port"]

#: Transports sipedge speaks, as they are spelled in Via and in config.
TRANSPORTS: Final = ("udp", "tcp", "tls")


def default_port(transport: str) -> int:
    """RFC 3261 §19.1.2: 5061 for TLS (sips), 5060 otherwise."""
    return 5061 if transport == "tls" else 5060


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A transport address: ``udp:127.0.0.1:5060``.

    Attributes:
        transport: ``"udp"``, ``"tcp"`` or ``"tls"`` (lower case).
        host: an IP address literal (IPv6 without brackets) or, before resolution, a name.
        port: the port number.
    """

    transport: str
    host: str
    port: int

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
