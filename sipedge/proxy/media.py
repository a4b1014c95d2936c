"""SDP media check: is the media Twilio offers or answers inside Twilio's media range?

Over Interconnect, Twilio's media comes from and goes to 168.86.128.0/18, UDP 10000–60000
(the catalogue, ``../shared/reference``). An SDP from Twilio whose ``c=`` address or ``m=``
port is outside it means the call's media would take another path (the public internet)
or the configured range is stale. sipedge never rewrites SDP (it is a signalling proxy):
it reads the body of INVITEs and of 18x/2xx answers that come from a gateway, only those,
and reports what it found; the shell counts and logs it (rate-limited).

RFC 4566 §5.7 (``c=<nettype> <addrtype> <address>[/ttl][/n]``) and §5.14
(``m=<media> <port>[/<n>] <proto> <fmt> ...``); a port of 0 is a disabled stream
(RFC 3264 §6) and is not checked.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

__all__ = ["MediaIssue", "MediaProblem", "MediaRange", "check_sdp"]


class MediaIssue(enum.Enum):
    """What was outside the range (a metric label)."""

    __hash__ = object.__hash__

    ADDRESS = "address"  # c= outside the network, or not IPv4
    PORT = "port"  # m= port outside the UDP range


@dataclass(frozen=True, slots=True)
class MediaRange:
    """Where Twilio's media may be: one IPv4 network and an inclusive UDP port range."""

    network: ipaddress.IPv4Network
    low_port: int
    high_port: int


@dataclass(frozen=True, slots=True)
class MediaProblem:
    """The first value of an SDP outside the range."""

    issue: MediaIssue
    value: str  # the address or port as written (for the log line)


def check_sdp(body: bytes, media: MediaRange) -> MediaProblem | None:
    """The first ``c=`` address or ``m=`` port of ``body`` outside ``media``, or None.

    Args:
        body: an SDP body (``application/sdp``); other bodies yield None.
        media: the allowed range.

    Returns:
        None when every connection address and media port is inside the range.
    """
    for raw in body.split(b"\n"):
        line = raw.rstrip(b"\r")
        if line.startswith(b"c="):
            parts = line[2:].split()
            if len(parts) < 3:
                continue
            address = parts[2].split(b"/", 1)[0]
            text = address.decode("ascii", "replace")
            if parts[1] != b"IP4":
                return MediaProblem(MediaIssue.ADDRESS, text)
            try:
                ip = ipaddress.IPv4Address(text)
            except ValueError:
                return MediaProblem(MediaIssue.ADDRESS, text)
            if ip not in media.network:
                return MediaProblem(MediaIssue.ADDRESS, text)
        elif line.startswith(b"m="):
            parts = line[2:].split()
            if len(parts) < 2:
                continue
            port = parts[1].split(b"/", 1)[0]
            if not port.isdigit() or len(port) > 5:
                return MediaProblem(MediaIssue.PORT, port.decode("ascii", "replace"))
            value = int(port)
            if value != 0 and not media.low_port <= value <= media.high_port:
                return MediaProblem(MediaIssue.PORT, str(value))
    return None
