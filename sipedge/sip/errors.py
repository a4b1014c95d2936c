"""Errors of the SIP layer: one root, one parse error carrying the status to answer.

After h11: the parser never lets anything but :class:`ParseError` escape, and the error
says what a proxy should do about it -- answer with ``status`` (RFC 3261 §16.3 / §21.4) or
drop silently (``status is None``: an unparseable response or an unanswerable datagram,
RFC 3261 §16.7 step 1 / RFC 4475 §3.1.2.19).
"""

from __future__ import annotations

__all__ = ["ParseError", "ProtocolViolation", "SipError"]


class SipError(Exception):
    """Root of every error raised by :mod:`sipedge.sip`."""


class ParseError(SipError):
    """Malformed wire data.

    Attributes:
        status: the SIP status a proxy should answer with (400, 416, 420, 483, 501, 505...),
            or ``None`` when no answer is possible and the message must be dropped.
        reason: short human text for logs and counters (``str``: it is not wire data).
        extra_headers: header lines to add to the answer, e.g. ``((b"Unsupported", b"foo"),)``
            for a 420 (RFC 3261 §20.40).
        phrase: the Reason-Phrase of the answer (RFC 3261 §21.4.1: "SHOULD identify the
            syntax problem in more detail"), e.g. ``b"Missing Call-ID"``; None for the
            status's default phrase.  Always a short ASCII literal of the raising code,
            never bytes of the peer (nothing received is echoed on the start line).
    """

    __slots__ = ("extra_headers", "phrase", "reason", "status")

    def __init__(
        self,
        status: int | None,
        reason: str,
        extra_headers: tuple[tuple[bytes, bytes], ...] = (),
        *,
        phrase: bytes | None = None,
    ) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.extra_headers = extra_headers
        self.phrase = phrase

    @property
    def drop(self) -> bool:
        """True when the message must be discarded without an answer."""
        return self.status is None

    def __str__(self) -> str:
        return f"{self.status or 'drop'}: {self.reason}"


class ProtocolViolation(SipError):
    """A caller asked for something the protocol forbids (API misuse, not peer input).

    Example: forwarding a request whose Max-Forwards is already 0 (RFC 3261 §16.3 step 3
    says answer 483 instead), or stripping the only Via of a response.
    """
