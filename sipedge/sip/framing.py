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

Memory is bounded (no unbounded buffer for a peer): a header block that grows past
``max_message`` without CRLF CRLF raises at once, and a Content-Length that would make the
message larger raises before any body byte is awaited, so the buffer never holds more
than ``max_message`` plus the last chunk fed.  Both raise ``ParseError(513)``; the
transport tells them apart with :meth:`StreamFramer.pending_head` (the header block is
known only in the second case, and only then can a 513 be addressed).
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

    __slots__ = (
        "_buf", "_crlfs", "_head_end", "_needed", "_scan", "max_message", "pings", "state",
    )

    def __init__(self, max_message: int = 65535) -> None:
        self.max_message = max_message
        self.pings = 0
        self.state = FramerState.BETWEEN
        self._buf = bytearray()
        self._crlfs = 0  # consecutive keep-alive CRLFs not yet counted as a ping
        self._scan = 0  # where the next CRLF CRLF search starts
        self._needed = 0  # total size of the message being received (state BODY)
        self._head_end = -1  # offset of the CRLF CRLF once found (state BODY), else -1

    def feed(self, data: bytes) -> None:
        """Append bytes received from the connection."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes held that do not form a whole message yet."""
        return len(self._buf)

    @property
    def in_message(self) -> bool:
        """True while a message has begun but is not whole yet (state not ``BETWEEN``).

        Keep-alive CRLFs between messages do not count: a connection that is only
        pinging is between messages.
        """
        return self.state is not FramerState.BETWEEN

    def pending_head(self) -> bytes | None:
        """The header block (through CRLF CRLF) of the message being framed, if known.

        Known once the end of the header block was found, including when
        :meth:`next_message` raised because the Content-Length makes the message too
        large: the transport copies Via/From/To/Call-ID/CSeq from it to answer 513
        (RFC 3261 §21.5.14). ``None`` while the end has not been seen, e.g. after a
        header block overflowed ``max_message`` with no CRLF CRLF at all.
        """
        if self._head_end < 0:
            return None
        return bytes(self._buf[: self._head_end + 4])

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
            self._head_end = end
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
        self._head_end = -1
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
