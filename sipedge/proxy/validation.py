"""Request validation decisions of a proxy (RFC 3261 §16.3), as pure functions.

``validate_request`` runs the §16.3 checks that do not need state over a parsed
:class:`~sipedge.sip.message.Request` and returns None (go on) or a :class:`Reject` saying
which status to answer with.  Loop detection (§16.3 step 4, 482) needs the proxy's own
Via and lives in the proxy core.  ``decide`` glues parsing and validation into the
stateless verdict the conformance suite checks against RFC 4475 / RFC 5118:
forward, answer with a status, or drop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from sipedge.sip.errors import ParseError
from sipedge.sip.headers import MAGIC_COOKIE, parse_name_addr, parse_via
from sipedge.sip.message import MAX_VIA, Request, Response, parse
from sipedge.sip.uri import Uri, parse_uri

__all__ = [
    "SUPPORTED_SCHEMES",
    "Decision",
    "Drop",
    "Reject",
    "check_request",
    "decide",
    "validate_request",
    "validate_response",
]

#: RFC 3261 §16.3 step 2: URI schemes this proxy can route (anything else: 416).
SUPPORTED_SCHEMES: Final = frozenset({b"sip", b"sips", b"tel"})

#: Broadcast/unspecified addresses a response must never be sent to (RFC 4475 §3.3.10).
_NEVER_SEND_TO: Final = frozenset({b"255.255.255.255", b"0.0.0.0"})
#: Route values per request: the same bound as Via (``sip.message.MAX_VIA``): a route set
#: longer than a Max-Forwards-70 path is no dialog's.
MAX_ROUTE: Final = MAX_VIA
#: Visible ASCII (0x21-0x7E): ``bytes.translate(None, _VISIBLE)`` leaves what is not.
_VISIBLE: Final = bytes(range(0x21, 0x7F))


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer the request statelessly with ``status`` instead of forwarding it.

    Attributes:
        status: SIP status code to answer with.
        reason: short log text; also the answer's reason phrase when ``phrase`` is None
            (so always a literal of this package, ASCII).
        extra_headers: header lines to add, e.g. ``((b"Unsupported", b"foo"),)``.
        phrase: the reason phrase of the answer (``ParseError.phrase``), if any.
    """

    status: int
    reason: str
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()
    phrase: bytes | None = None


@dataclass(frozen=True, slots=True)
class Drop:
    """Discard the response silently (RFC 3261 §16.7 has nobody to tell)."""

    reason: str


class Decision(NamedTuple):
    """Stateless verdict for one datagram: ``("forward", None)``, ``("answer", 400)``..."""

    action: Literal["forward", "answer", "drop"]
    status: int | None


def _bad(reason: str) -> Reject:
    return Reject(400, reason)


def validate_request(req: Request) -> Reject | None:
    """RFC 3261 §16.3 request validation (steps 1-3 and 6; 4 and 5 are the core's).

    Args:
        req: a request that :func:`~sipedge.sip.message.parse` accepted.

    Returns:
        None when the request may be processed, else the :class:`Reject` to answer with.
    """
    checked = check_request(req)
    return checked if isinstance(checked, Reject) else None


def check_request(req: Request) -> Reject | Uri:
    """:func:`validate_request`, handing back the parsed Request-URI of a valid request.

    The proxy routes on that URI; taking it from here parses it once per request
    instead of twice (validation has to parse it anyway, RFC 5118 §4.2).

    Returns:
        The :class:`Reject` to answer with, else the parsed Request-URI.
    """
    try:
        return _validate_request(req)
    except ParseError as exc:
        return Reject(exc.status or 400, exc.reason, exc.extra_headers, exc.phrase)


def _validate_request(req: Request) -> Reject | Uri:
    # Step 1 "reasonable syntax": the values a proxy relies on must be well formed.  The
    # first header access builds the message's header index, which checks the structure
    # parse() leaves out (bare LF, mandatory/singleton headers, CSeq number and method,
    # Max-Forwards digits: RFC 3261 §7.3.1, §8.1.1, RFC 4475 §3.1.2.17-18, §3.3.8-9).
    via = req.top_via  # RFC 4475 §3.1.2.1 badinv01 (empty Via params)
    branch = via.branch
    if branch is not None and branch == MAGIC_COOKIE:
        # RFC 4475 §3.2.1: a bare magic cookie cannot key a transaction; answer 400
        # statelessly rather than risk matching unrelated requests.
        return _bad("Via branch is the bare magic cookie")
    # From/To: quotbal, baddn, badaspec (RFC 4475 §3.1.2.6, .14, .15).  Parsed through
    # the message so the core's from_tag/to_tag reuse the cached values.
    _ = req.from_, req.to  # parsing is the check: validate_request turns ParseError into 400
    if req.call_id.translate(None, _VISIBLE):
        # RFC 3261 §25.1: callid = word ["@" word], visible ASCII only. The core keys
        # transactions on it and logs it: a control character (ESC, NUL) or 8-bit byte
        # there is a terminal-injection or smuggling vector downstream.
        return Reject(400, "Call-ID with a control character", phrase=b"Bad Call-ID")
    for value in req.header_values(b"contact"):
        if value != b"*":
            parse_name_addr(value)  # regbadct (§3.1.2.13), badinv01 Contact params
    routes = req.header_values(b"route")
    if len(routes) > MAX_ROUTE:
        # RFC 3261 §21.5.14: a route set longer than any path through Twilio can make is
        # beyond what we process; each value costs a parse and an own-address check, so a
        # trusted peer's 60 KB of Route values must not cost tens of milliseconds.
        return Reject(513, "too many Route values", phrase=b"Too Many Route")
    for value in routes:
        parse_name_addr(value)
    date = req.header(b"date")
    if date is not None and not date.endswith(b" GMT"):
        # RFC 3261 §20.17: SIP-date is always in GMT (RFC 4475 §3.1.2.12 baddate).
        return _bad("Date not in GMT")

    # Step 2 "URI scheme": 416 for schemes we cannot route (RFC 4475 §3.3.2, §3.3.3).
    ruri = req.request_uri
    colon = ruri.find(b":")
    if colon <= 0:
        return _bad("Request-URI without scheme")
    scheme = ruri[:colon].lower()
    if scheme not in SUPPORTED_SCHEMES:
        return Reject(416, "unsupported URI scheme")
    uri = parse_uri(ruri)  # RFC 5118 §4.2 ipv6-bad: unbracketed IPv6 host → 400
    if uri.headers:
        # RFC 3261 §19.1.5: headers are not allowed in a Request-URI (RFC 4475 §3.1.2.11).
        return _bad("Request-URI carries URI headers")

    # Step 3 "Max-Forwards": 0 means do not forward (RFC 4475 §3.3.11 zeromf).  An OPTIONS
    # addressed to the proxy itself may be answered instead; the core decides that.
    if req.max_forwards == 0:
        return Reject(483, "Max-Forwards is 0")

    # Step 6 "Proxy-Require": we support no extensions that need proxy involvement,
    # so every option tag is unsupported (RFC 3261 §20.29; RFC 4475 §3.3.5 bext01).
    tags = [t for t in req.header_values(b"proxy-require") if t]
    if tags:
        return Reject(420, "unsupported Proxy-Require", ((b"Unsupported", b", ".join(tags)),))
    return uri


def validate_response(resp: Response) -> Drop | None:
    """Checks before relaying a response upstream (RFC 3261 §16.7).

    The top Via is ours; the next one names where the response goes.  A malformed Via or
    a broadcast/unspecified sent-by there means drop (RFC 4475 §3.3.10 bcast).

    Returns:
        None to relay it, or a :class:`Drop`.
    """
    try:
        vias = resp.header_values(b"via")
        parse_via(vias[0])
        if len(vias) > 1:
            nxt = parse_via(vias[1])
            target = nxt.received or nxt.host
            if target in _NEVER_SEND_TO or nxt.host in _NEVER_SEND_TO:
                return Drop("next Via names a broadcast/unspecified address")
    except ParseError as exc:
        return Drop(exc.reason)
    return None


def decide(data: bytes) -> Decision:
    """Stateless proxy verdict for one datagram: parse, then validate.

    Args:
        data: the datagram.

    Returns:
        ``Decision("forward", None)``, ``Decision("answer", status)`` or
        ``Decision("drop", None)``.
    """
    try:
        msg = parse(data)
    except ParseError as exc:
        if exc.status is None:
            return Decision("drop", None)
        return Decision("answer", exc.status)
    if isinstance(msg, Response):
        return Decision("drop", None) if validate_response(msg) else Decision("forward", None)
    reject = validate_request(msg)
    if reject is not None:
        return Decision("answer", reject.status)
    return Decision("forward", None)

