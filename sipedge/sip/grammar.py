"""Byte-level grammar constants, precomputed once at import (uvicorn ``STATUS_LINE`` idea).

Nothing here scans messages; :mod:`sipedge.sip.message` owns the hot path and uses these
tables for O(1) lookups: canonical header keys for every common spelling, compact forms,
token character sets, reason phrases and ready-made status lines.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CANONICAL",
    "COMMA",
    "COMPACT_FORMS",
    "CRLF",
    "DIGITS",
    "DQUOTE",
    "HTAB",
    "KNOWN_METHODS",
    "LAQUOT",
    "LF",
    "LIST_HEADERS",
    "LWS",
    "MAX_CSEQ",
    "PRETTY_NAMES",
    "QMARK",
    "REASON_PHRASES",
    "SINGLETON_HEADERS",
    "SP",
    "STATUS_LINES",
    "TOKEN_CHARS",
    "WS",
    "canonical_name",
    "is_token",
    "status_line",
]

CRLF: Final = b"\r\n"
#: RFC 3261 §25.1: WSP is SP / HTAB.
WS: Final = b" \t"
#: Linear white space including the CRLF of a folded line (RFC 3261 §7.3.1).
LWS: Final = b" \t\r\n"
DIGITS: Final = b"0123456789"
#: RFC 3261 §25.1 token: alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~"
TOKEN_CHARS: Final = (
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)
#: RFC 3261 §8.1.1.5: the CSeq sequence number MUST be expressible as a 32-bit unsigned int.
MAX_CSEQ: Final = 2**32 - 1
# Single bytes as ints, for `in` tests on the hot path: bytes.__contains__ takes an int
# with one memchr, but first tries a bytes operand as an int and pays for a formatted
# TypeError (~2,100 instructions a test on CPython 3.11, 12 % of a call through the
# compiled core). Longer needles use bytes.find.
LF: Final = 0x0A
HTAB: Final = 0x09
SP: Final = 0x20
DQUOTE: Final = 0x22
COMMA: Final = 0x2C
LAQUOT: Final = 0x3C
QMARK: Final = 0x3F

#: RFC 3261 §7.3.3 compact forms and the IANA registry's later additions.
COMPACT_FORMS: Final[dict[bytes, bytes]] = {
    b"a": b"accept-contact",  # RFC 3841
    b"b": b"referred-by",  # RFC 3892
    b"c": b"content-type",  # RFC 3261
    b"d": b"request-disposition",  # RFC 3841
    b"e": b"content-encoding",  # RFC 3261
    b"f": b"from",  # RFC 3261
    b"i": b"call-id",  # RFC 3261
    b"j": b"reject-contact",  # RFC 3841
    b"k": b"supported",  # RFC 3261
    b"l": b"content-length",  # RFC 3261
    b"m": b"contact",  # RFC 3261
    b"n": b"identity-info",  # RFC 4474
    b"o": b"event",  # RFC 6665
    b"r": b"refer-to",  # RFC 3515
    b"s": b"subject",  # RFC 3261
    b"t": b"to",  # RFC 3261
    b"u": b"allow-events",  # RFC 6665
    b"v": b"via",  # RFC 3261
    b"x": b"session-expires",  # RFC 4028
    b"y": b"identity",  # RFC 8224
}

#: Canonical key -> the spelling we write when we create a header line ourselves.
PRETTY_NAMES: Final[dict[bytes, bytes]] = {
    b"accept": b"Accept",
    b"accept-contact": b"Accept-Contact",
    b"accept-encoding": b"Accept-Encoding",
    b"accept-language": b"Accept-Language",
    b"alert-info": b"Alert-Info",
    b"allow": b"Allow",
    b"allow-events": b"Allow-Events",
    b"authentication-info": b"Authentication-Info",
    b"authorization": b"Authorization",
    b"call-id": b"Call-ID",
    b"call-info": b"Call-Info",
    b"contact": b"Contact",
    b"content-disposition": b"Content-Disposition",
    b"content-encoding": b"Content-Encoding",
    b"content-language": b"Content-Language",
    b"content-length": b"Content-Length",
    b"content-type": b"Content-Type",
    b"cseq": b"CSeq",
    b"date": b"Date",
    b"diversion": b"Diversion",
    b"error-info": b"Error-Info",
    b"event": b"Event",
    b"expires": b"Expires",
    b"from": b"From",
    b"identity": b"Identity",
    b"identity-info": b"Identity-Info",
    b"in-reply-to": b"In-Reply-To",
    b"max-forwards": b"Max-Forwards",
    b"mime-version": b"MIME-Version",
    b"min-expires": b"Min-Expires",
    b"min-se": b"Min-SE",
    b"organization": b"Organization",
    b"p-asserted-identity": b"P-Asserted-Identity",
    b"p-preferred-identity": b"P-Preferred-Identity",
    b"priority": b"Priority",
    b"privacy": b"Privacy",
    b"proxy-authenticate": b"Proxy-Authenticate",
    b"proxy-authorization": b"Proxy-Authorization",
    b"proxy-require": b"Proxy-Require",
    b"rack": b"RAck",
    b"reason": b"Reason",
    b"record-route": b"Record-Route",
    b"refer-to": b"Refer-To",
    b"referred-by": b"Referred-By",
    b"reject-contact": b"Reject-Contact",
    b"remote-party-id": b"Remote-Party-ID",
    b"reply-to": b"Reply-To",
    b"request-disposition": b"Request-Disposition",
    b"require": b"Require",
    b"retry-after": b"Retry-After",
    b"route": b"Route",
    b"rseq": b"RSeq",
    b"server": b"Server",
    b"session-expires": b"Session-Expires",
    b"subject": b"Subject",
    b"subscription-state": b"Subscription-State",
    b"supported": b"Supported",
    b"timestamp": b"Timestamp",
    b"to": b"To",
    b"unsupported": b"Unsupported",
    b"user-agent": b"User-Agent",
    b"via": b"Via",
    b"warning": b"Warning",
    b"www-authenticate": b"WWW-Authenticate",
}


def _spellings(key: bytes, pretty: bytes) -> set[bytes]:
    """Every casing of a header name we expect on the wire (one dict hit on the hot path)."""
    title = b"-".join(part[:1].upper() + part[1:] for part in key.split(b"-"))
    return {key, pretty, title, key.upper()}


def _build_canonical() -> dict[bytes, bytes]:
    table: dict[bytes, bytes] = {}
    for key, pretty in PRETTY_NAMES.items():
        for spelling in _spellings(key, pretty):
            table[spelling] = key
    for short, key in COMPACT_FORMS.items():
        table[short] = key
        table[short.upper()] = key
    return table


#: Wire spelling -> canonical lowercase long-form key.  A miss falls back to
#: :func:`canonical_name` (``.lower()`` + compact-form map).
CANONICAL: Final[dict[bytes, bytes]] = _build_canonical()

_NOT_TOKEN_DELETE: Final = TOKEN_CHARS


def is_token(value: bytes) -> bool:
    """True if ``value`` is a non-empty RFC 3261 token (C-speed: one translate call)."""
    return bool(value) and not value.translate(None, _NOT_TOKEN_DELETE)


def canonical_name(name: bytes) -> bytes | None:
    """Canonical key for a raw header name, or None if it is not a token.

    Args:
        name: the bytes before the colon, possibly with trailing WSP (RFC 3261 §7.3.1
            allows ``Via  :``).

    Returns:
        Lowercase long-form key (compact forms expanded), or None when the name is not a
        valid token.
    """
    name = name.rstrip(WS)
    if not is_token(name):
        return None
    low = name.lower()
    return COMPACT_FORMS.get(low, low)


#: Headers whose value is a comma-separated list (RFC 3261 §7.3.1): header_values() splits
#: these.  Headers holding commas inside a single value (Date, WWW-Authenticate...) are not
#: in this set.
LIST_HEADERS: Final[frozenset[bytes]] = frozenset(
    {
        b"accept",
        b"accept-contact",
        b"accept-encoding",
        b"accept-language",
        b"alert-info",
        b"allow",
        b"allow-events",
        b"call-info",
        b"contact",
        b"content-encoding",
        b"content-language",
        b"error-info",
        b"in-reply-to",
        b"p-asserted-identity",
        b"p-preferred-identity",
        b"privacy",
        b"proxy-require",
        b"reason",
        b"record-route",
        b"reject-contact",
        b"require",
        b"route",
        b"supported",
        b"unsupported",
        b"via",
        b"warning",
    }
)

#: Headers that MUST appear at most once (RFC 3261 §7.3.1 / §20; RFC 4475 §3.3.8, §3.3.9).
SINGLETON_HEADERS: Final[frozenset[bytes]] = frozenset(
    {b"call-id", b"cseq", b"from", b"to", b"max-forwards", b"content-length"}
)

#: Methods this stack knows (RFC 3261 + the registered extensions a proxy meets).
KNOWN_METHODS: Final[frozenset[bytes]] = frozenset(
    {
        b"ACK",
        b"BYE",
        b"CANCEL",
        b"INFO",
        b"INVITE",
        b"MESSAGE",
        b"NOTIFY",
        b"OPTIONS",
        b"PRACK",
        b"PUBLISH",
        b"REFER",
        b"REGISTER",
        b"SUBSCRIBE",
        b"UPDATE",
    }
)

#: RFC 3261 §21 default reason phrases (plus the common extension codes).
REASON_PHRASES: Final[dict[int, bytes]] = {
    100: b"Trying",
    180: b"Ringing",
    181: b"Call Is Being Forwarded",
    182: b"Queued",
    183: b"Session Progress",
    199: b"Early Dialog Terminated",
    200: b"OK",
    202: b"Accepted",
    204: b"No Notification",
    300: b"Multiple Choices",
    301: b"Moved Permanently",
    302: b"Moved Temporarily",
    305: b"Use Proxy",
    380: b"Alternative Service",
    400: b"Bad Request",
    401: b"Unauthorized",
    402: b"Payment Required",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    406: b"Not Acceptable",
    407: b"Proxy Authentication Required",
    408: b"Request Timeout",
    410: b"Gone",
    413: b"Request Entity Too Large",
    414: b"Request-URI Too Long",
    415: b"Unsupported Media Type",
    416: b"Unsupported URI Scheme",
    420: b"Bad Extension",
    421: b"Extension Required",
    423: b"Interval Too Brief",
    429: b"Provide Referrer Identity",
    480: b"Temporarily Unavailable",
    481: b"Call/Transaction Does Not Exist",
    482: b"Loop Detected",
    483: b"Too Many Hops",
    484: b"Address Incomplete",
    485: b"Ambiguous",
    486: b"Busy Here",
    487: b"Request Terminated",
    488: b"Not Acceptable Here",
    489: b"Bad Event",
    491: b"Request Pending",
    493: b"Undecipherable",
    500: b"Server Internal Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Server Time-out",
    505: b"Version Not Supported",
    513: b"Message Too Large",
    580: b"Precondition Failure",
    600: b"Busy Everywhere",
    603: b"Decline",
    604: b"Does Not Exist Anywhere",
    606: b"Not Acceptable",
}

#: Precomputed ``SIP/2.0 <code> <reason>`` start lines (no CRLF).
STATUS_LINES: Final[dict[int, bytes]] = {
    code: b"SIP/2.0 %d %s" % (code, reason) for code, reason in REASON_PHRASES.items()
}


def status_line(status: int, reason: bytes | None = None) -> bytes:
    """The response start line for ``status`` (no CRLF); default reason when None.

    Args:
        status: a 3-digit SIP status code.
        reason: reason phrase to use instead of the default.

    Returns:
        ``b"SIP/2.0 404 Not Found"``.
    """
    if reason is None:
        line = STATUS_LINES.get(status)
        if line is not None:
            return line
        reason = REASON_PHRASES.get(status - status % 100, b"Unknown")
    return b"SIP/2.0 %d %s" % (status, reason)
