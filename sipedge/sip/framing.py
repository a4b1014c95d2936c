"""Stream framing for SIP over TCP/TLS (RFC 3261 §18.3, RFC 5626 §3.5.1).

Theory of operation
-------------------
A stream carries messages back to back.  Between messages a peer may send CRLF keep-alives:
a double CRLF is a *ping* that the transport answers with a single CRLF *pong*
(RFC 5626 §3.5.1).  Each message is a header block ending in CRLF CRLF followed by exactly
Content-Length body bytes; on streams Content-Length is mandatory (RFC 3261 §18.3), so a
missing or malformed one makes framing unrecoverable and the transport must close.

The framer is a three-state machine, kept as data:

=============  ===================================  =====================================
state          input                                next
=============  ===================================  =====================================
``BETWEEN``    CRLF                                 ``BETWEEN`` (two in a row = one ping)
``BETWEEN``    any other byte                       ``HEADERS``
``HEADERS``    CRLF CRLF found, Content-Length ok   ``BODY``
``HEADERS``    over ``max_message`` / bad CL        error (ParseError, close)
``BODY``       ``needed`` bytes buffered            ``BETWEEN`` (message returned)
=============  ===================================  =====================================

Work is O(n) in the bytes fed: the CRLF CRLF search resumes where the previous one stopped
and a message whose size is known is not looked at again until enough bytes arrived.
"""

from __future__ import annotations

import enum

from sipedge.sip.errors import ParseError
from sipedge.sip.grammar import LWS, canonical_name

__all__ = ["FramerState", "StreamFramer"]


class FramerState(enum.Enum):
    """Where the framer is within the byte stream."""

    BETWEEN = "between"  # skipping keep-alive CRLFs
    HEADERS = "headers"  # looking for the CRLF CRLF ending the header block
    BODY = "body"  # waiting for Content-Length body bytes


class StreamFramer:
    """Cut a TCP/TLS byte stream into whole SIP messages.

    Attributes:
        max_message: largest message accepted (header block + body), in bytes.
        pings: double-CRLF keep-alives seen since the caller last reset it to 0.
        state: the current :class:`FramerState`.
    """

    __slots__ = ("_buf", "_crlfs", "_needed", "_scan", "max_message", "pings", "state")

    def __init__(self, max_message: int = 65535) -> None:
        self.max_message = max_message
        self.pings = 0
        self.state = FramerState.BETWEEN
        self._buf = bytearray()
        self._crlfs = 0  # consecutive keep-alive CRLFs not yet counted as a ping
        self._scan = 0  # where the next CRLF CRLF search starts
        self._needed = 0  # total size of the message being received (state BODY)

    def feed(self, data: bytes) -> None:
        """Append bytes received from the connection."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes held that do not form a whole message yet."""
        return len(self._buf)

    def next_message(self) -> bytes | None:
        """Return the next whole message, or None when more bytes are needed.

        Raises:
            ParseError: framing is unrecoverable (Content-Length missing, malformed or
                conflicting; message over ``max_message``): close the connection.
        """
        buf = self._buf
        if self.state is FramerState.BETWEEN:
            # RFC 3261 §7.5 / RFC 5626 §3.5.1: CRLFs between messages are keep-alives.
            skip = 0
            n = len(buf)
            while skip + 2 <= n and buf[skip] == 13 and buf[skip + 1] == 10:
                skip += 2
                self._crlfs += 1
                if self._crlfs == 2:
                    self.pings += 1
                    self._crlfs = 0
            if skip:
                del buf[:skip]
            if not buf or buf == b"\r":
                return None
            self._crlfs = 0
            self.state = FramerState.HEADERS
            self._scan = 0
        if self.state is FramerState.HEADERS:
            end = buf.find(b"\r\n\r\n", self._scan)
            if end < 0:
                if len(buf) > self.max_message:
                    raise ParseError(513, "header block larger than the maximum message size")
                self._scan = max(0, len(buf) - 3)
                return None
            body_len = _content_length(bytes(buf[:end]))
            self._needed = end + 4 + body_len
            if self._needed > self.max_message:
                raise ParseError(513, "message larger than the maximum message size")
            self.state = FramerState.BODY
        if len(buf) < self._needed:
            return None
        message = bytes(buf[: self._needed])
        del buf[: self._needed]
        self.state = FramerState.BETWEEN
        self._needed = 0
        return message


def _content_length(head: bytes) -> int:
    """Content-Length of a header block (mandatory on streams, RFC 3261 §18.3)."""
    found: bytes | None = None
    for line in head.split(b"\r\n")[1:]:
        c = line.find(b":")
        if c <= 0 or line[:1] in (b" ", b"\t"):
            continue
        if canonical_name(line[:c]) != b"content-length":
            continue
        value = line[c + 1 :].strip(LWS)
        if not value.isdigit() or len(value) > 10:
            raise ParseError(400, "Content-Length not digits")
        if found is not None and found != value:
            # RFC 4475 §3.3.9 mcl01: conflicting lengths make framing impossible.
            raise ParseError(400, "conflicting Content-Length values")
        found = value
    if found is None:
        raise ParseError(400, "Content-Length missing on a stream transport")
    return int(found)
