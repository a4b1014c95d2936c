"""★ Hot path ★: SIP requests/responses as lazy views over the received bytes.

Theory of operation
-------------------
``parse()`` makes exactly one pass over the header block: it finds the end of the headers
with ``bytes.find(b"\\r\\n\\r\\n")``, splits the block into wire lines (one C call), and for
each line looks the name up in a precomputed dict of common spellings
(:data:`sipedge.sip.grammar.CANONICAL`).  It records, per canonical key, the index of the
top-most line carrying it.  Nothing else is interpreted eagerly except what RFC 3261 makes
a *framing or identity* question and what every later step needs anyway:

* the start line (method / Request-URI / version, or status / reason),
* Content-Length (digits only, at most one, within the datagram: RFC 4475 §3.1.2.2-3,
  §3.3.9),
* the mandatory headers (RFC 3261 §8.1.1: Via, From, To, Call-ID, CSeq), singletons
  appearing once (RFC 4475 §3.3.8), CSeq number and method (§8.1.1.5, RFC 4475 §3.1.2.17),
* Max-Forwards digits for requests (§16.3 step 3 needs it on every request).

Everything else -- Via parameters, tags, Route values -- is parsed on first access and
cached.  Folded header lines (§7.3.1) are recognised by their leading WSP and take a slow
path that unfolds them; they never raise.

Serialisation is splicing: the outgoing message is ``b"\\r\\n".join`` of the original wire
lines with the few lines we change replaced (start line, Max-Forwards, the previous hop's
Via, Route) and our new lines inserted (Via, Record-Route).  Every other byte -- header
order, casing, compact forms, odd whitespace, the body -- passes through untouched.

Errors: ``parse`` raises :class:`ParseError` and nothing else, ever.  Accessors that
interpret a value lazily (``top_via``, ``from_tag``...) raise ``ParseError(400)`` on a
malformed value; :func:`sipedge.proxy.validation.validate_request` touches them all first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice, repeat
from operator import itemgetter
from typing import Final

from sipedge.sip.errors import ParseError, ProtocolViolation
from sipedge.sip.grammar import (
    CANONICAL,
    KNOWN_METHODS,
    LIST_HEADERS,
    LWS,
    MAX_CSEQ,
    PRETTY_NAMES,
    SINGLETON_HEADERS,
    WS,
    canonical_name,
    is_token,
    status_line,
)
from sipedge.sip.headers import (
    CSeq,
    Via,
    find_unquoted,
    parse_cseq,
    parse_name_addr,
    parse_via,
    split_values,
    unfold,
)

__all__ = [
    "ForwardPlan",
    "Message",
    "Request",
    "Response",
    "answer_parse_error",
    "build_ack",
    "build_cancel",
    "build_request",
    "build_response",
    "forward_request",
    "parse",
    "strip_top_via",
]

#: RFC 3261 §16.6 step 3 / §8.1.1.6: the value a proxy inserts when Max-Forwards is absent,
#: and the ceiling of what we forward (Kamailio maxfwd ``max_limit`` semantics).
MAX_FORWARDS_DEFAULT: Final = 70

_MANDATORY: Final = frozenset({b"via", b"from", b"to", b"call-id", b"cseq"})
_CONTINUATION: Final = (b" ", b"\t")
#: Bytes legal in a Request-URI on the start line: VCHAR without '<', '>' and '"'
#: (RFC 3261 §25.1; RFC 4475 §3.1.2.7 and §3.1.2.8).
_RURI_CHARS: Final = bytes(c for c in range(0x21, 0x7F) if c not in b'<>"')
#: What may follow ``;rport`` in the fast path of :func:`_mark_received`.
_RPORT_END: Final = (b"", b";", b"=")
_LWS_BYTES: Final = (b" ", b"\t", b"\r", b"\n")
_MF_DEFAULT_LINE: Final = b"Max-Forwards: %d" % MAX_FORWARDS_DEFAULT
_partition: Final = bytes.partition
_NAME: Final = itemgetter(0)
_CANON_GET: Final = CANONICAL.get


class Message:
    """Common view over a parsed request or response (slotted, lazy, bytes only).

    Internally a message is its list of wire lines (``_lines[0]`` is the start line), the
    ``name:value`` partition of every header line, the canonical key of every header line
    (None for folded continuation lines) and the index of the top-most line per key.

    Attributes:
        data: the message bytes (trailing datagram noise cut off).
    """

    __slots__ = (
        "_body_start",
        "_cseq",
        "_cseq_raw",
        "_folded",
        "_keys",
        "_lines",
        "_parts",
        "_present",
        "_top_via",
        "data",
    )

    data: bytes
    _lines: list[bytes]
    _parts: list[tuple[bytes, bytes, bytes]]
    _keys: list[bytes | None]
    _present: set[bytes | None]
    _folded: bool
    _body_start: int
    _cseq: CSeq | None
    _cseq_raw: list[bytes]
    _top_via: Via | None

    def _first_line(self, name: bytes) -> int | None:
        """Line number of the top-most header named ``name`` (canonical key), or None."""
        if name not in self._present:
            return None
        return self._keys.index(name) + 1

    # -- raw access -------------------------------------------------------------------

    def _end_of(self, n: int) -> int:
        """Index of the last wire line of the header starting at line ``n`` (folding)."""
        if not self._folded:
            return n
        lines = self._lines
        last = len(lines) - 1
        while n < last and lines[n + 1][:1] in _CONTINUATION:
            n += 1
        return n

    def _raw_value(self, n: int) -> bytes:
        """Value of the header at line ``n``, folded lines joined with CRLF, not stripped."""
        value = self._parts[n - 1][2]
        if self._folded:
            m = self._end_of(n)
            if m != n:
                value = b"\r\n".join([value, *self._lines[n + 1 : m + 1]])
        return value

    def _value(self, n: int) -> bytes:
        if self._folded:
            return unfold(self._raw_value(n)).strip(LWS)
        return self._parts[n - 1][2].strip(WS)

    def _indices(self, name: bytes) -> list[int]:
        """Line numbers of every header line named ``name``, top first."""
        first = self._first_line(name)
        if first is None:
            return []
        keys = self._keys
        out = [first]
        i = first  # keys[i] is line i + 1: search from the line after ``first``
        while True:
            try:
                i = keys.index(name, i)
            except ValueError:
                return out
            i += 1
            out.append(i)

    # -- public accessors ---------------------------------------------------------------

    def header(self, name: bytes) -> bytes | None:
        """Value of the top-most header named ``name``.

        Args:
            name: canonical lowercase long form, e.g. ``b"call-id"``.

        Returns:
            The value with LWS stripped and folding unfolded, or None if absent.
        """
        n = self._first_line(name)
        if n is None:
            return None
        return self._value(n)

    def header_values(self, name: bytes) -> list[bytes]:
        """Every value of ``name``, top first, comma lists split (RFC 3261 §7.3.1).

        Raises:
            ParseError: 400 on an unterminated quoted string inside a list header.
        """
        out: list[bytes] = []
        split = name in LIST_HEADERS
        for n in self._indices(name):
            value = self._value(n)
            if split:
                out.extend(split_values(value))
            else:
                out.append(value)
        return out

    def has_header(self, name: bytes) -> bool:
        """True if at least one header named ``name`` (canonical key) is present."""
        return name in self._present

    def header_lines(self) -> list[bytes]:
        """The raw header lines (folded ones included as separate wire lines)."""
        return self._lines[1:]

    @property
    def call_id(self) -> bytes:
        """The Call-ID (RFC 3261 §20.8)."""
        return self._value(self._keys.index(b"call-id") + 1)

    @property
    def cseq(self) -> CSeq:
        """The CSeq, validated at parse time (RFC 3261 §20.16)."""
        cseq = self._cseq
        if cseq is None:
            number, method = self._cseq_raw
            cseq = self._cseq = CSeq(int(number), method)
        return cseq

    @property
    def top_via(self) -> Via:
        """The top-most Via value, parsed on first use.

        Raises:
            ParseError: 400 when the top Via is malformed.
        """
        via = self._top_via
        if via is None:
            raw = self._raw_value(self._keys.index(b"via") + 1)
            comma = find_unquoted(raw, b",")
            via = parse_via(raw if comma < 0 else raw[:comma])
            self._top_via = via
        return via

    @property
    def via_count(self) -> int:
        """Number of Via values in the message (all lines, comma lists split)."""
        return len(self.header_values(b"via"))

    @property
    def from_tag(self) -> bytes | None:
        """The From tag (RFC 3261 §8.1.1.3) or None.

        Raises:
            ParseError: 400 when the From value is malformed.
        """
        return parse_name_addr(self._value(self._keys.index(b"from") + 1)).tag

    @property
    def to_tag(self) -> bytes | None:
        """The To tag (RFC 3261 §8.2.6.2) or None.

        Raises:
            ParseError: 400 when the To value is malformed.
        """
        return parse_name_addr(self._value(self._keys.index(b"to") + 1)).tag

    @property
    def body(self) -> bytes:
        """The body bytes exactly as received (never decoded)."""
        return self.data[self._body_start :]

    @property
    def start_line(self) -> bytes:
        """The start line as received."""
        return self._lines[0]


class Request(Message):
    """A parsed SIP request.

    Attributes:
        method: e.g. ``b"INVITE"`` (case-sensitive, RFC 3261 §7.1).
        request_uri: the Request-URI bytes as received.
        max_forwards: Max-Forwards value, None when absent.
    """

    __slots__ = ("max_forwards", "method", "request_uri")

    method: bytes
    request_uri: bytes
    max_forwards: int | None

    @property
    def top_route(self) -> bytes | None:
        """The first Route value (raw name-addr) or None (RFC 3261 §16.4)."""
        n = self._first_line(b"route")
        if n is None:
            return None
        values = split_values(self._value(n))
        return values[0]

    def __repr__(self) -> str:
        return f"<Request {self.method!r} {self.request_uri!r}>"


class Response(Message):
    """A parsed SIP response.

    Attributes:
        status: the status code, 100..699.
        reason: the reason phrase bytes (may be empty or non-ASCII: RFC 4475 §3.1.1.12).
    """

    __slots__ = ("reason", "status")

    status: int
    reason: bytes

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason!r}>"


# -- parser ----------------------------------------------------------------------------


def parse(data: bytes) -> Request | Response:
    """Parse one datagram or one framed stream message.

    Bytes beyond Content-Length are ignored (RFC 4475 §3.1.1.8 ``dblreq``); without a
    Content-Length the body is the rest of the datagram (RFC 3261 §18.3, RFC 4475 §3.4.1).

    Args:
        data: the raw message bytes.

    Returns:
        A :class:`Request` or :class:`Response` view over ``data``.

    Raises:
        ParseError: for anything malformed; ``status`` is what a proxy should answer with,
            None for "drop" (responses, unanswerable garbage).  Nothing else escapes.
    """
    try:
        return _parse(data)
    except ParseError:
        raise
    except Exception as exc:  # pragma: no cover - safety net; the fuzzers keep it unused
        raise ParseError(None, f"internal parser error: {type(exc).__name__}") from None


def _classify_slow(
    lines: list[bytes], keys: list[bytes | None], status: int | None
) -> bool:
    """Slow path for header lines whose name is not a common spelling.

    Fills ``keys`` in place (continuation lines stay None) and returns True when the
    block contains folded lines (RFC 3261 §7.3.1).
    """
    folded = False
    i = -1
    while True:
        try:
            i = keys.index(None, i + 1)
        except ValueError:
            return folded
        line = lines[i + 1]
        if line[:1] in _CONTINUATION:
            if i == 0:
                raise ParseError(status, "continuation line before any header")
            folded = True
            continue
        c = line.find(b":")
        if c < 0:
            raise ParseError(status, "header line without colon")
        key = canonical_name(line[:c])
        if key is None:
            raise ParseError(status, "malformed header name")
        keys[i] = key


def _parse(data: bytes) -> Request | Response:
    if type(data) is not bytes:
        data = bytes(data)
    if data[:2] == b"\r\n":
        # RFC 3261 §7.5: CRLFs before the start line are ignored (keep-alives).
        data = data.lstrip(b"\r\n")
        if not data:
            raise ParseError(None, "keep-alive only")
    is_response = data[:4] == b"SIP/"
    status_for_error = None if is_response else 400
    end = data.find(b"\r\n\r\n")
    if end < 0:
        # On a datagram the header block must be complete (framing.py handles streams).
        raise ParseError(status_for_error, "no empty line after the headers")
    head = data[:end]
    lines = head.split(b"\r\n")
    # A bare LF inside the header block would let a lenient downstream parser (many
    # accept LF line ends) see a different message (header injection): reject.  A bare
    # CR is caught by the value parsers of the headers we interpret.
    if head.count(b"\n") != len(lines) - 1:
        raise ParseError(status_for_error, "bare LF in header block")

    msg: Request | Response = (
        _parse_status_line(lines[0]) if is_response else _parse_request_line(lines[0])
    )

    # The one pass over the header lines, as C-level maps: name:value partition, then
    # canonical key by dict lookup (common spellings and compact forms precomputed).
    parts = list(map(_partition, islice(lines, 1, None), repeat(b":")))
    keys: list[bytes | None] = list(map(_CANON_GET, map(_NAME, parts)))
    folded = False
    if None in keys:
        folded = _classify_slow(lines, keys, status_for_error)
    present = set(keys)
    if len(present) != len(keys):
        # Some name repeats: it must not be a singleton (RFC 4475 §3.3.8, §3.3.9).
        for key in SINGLETON_HEADERS:
            if key in present and keys.count(key) > 1:
                raise ParseError(status_for_error, f"duplicate {key.decode()} header")
    if not present >= _MANDATORY:
        # RFC 3261 §8.1.1: To, From, CSeq, Call-ID, Via are mandatory (RFC 4475 §3.3.1).
        missing = ", ".join(sorted(k.decode() for k in _MANDATORY if k not in present))
        raise ParseError(status_for_error, f"missing mandatory header(s): {missing}")

    msg._lines = lines
    msg._parts = parts
    msg._keys = keys
    msg._present = present
    msg._folded = folded
    msg._top_via = None
    msg._cseq = None

    # Content-Length (RFC 3261 §20.14): digits only, must fit the datagram.
    body_start = end + 4
    ndata = len(data)
    if b"content-length" in present:
        if folded:
            cl = msg._value(keys.index(b"content-length") + 1)
        else:
            cl = parts[keys.index(b"content-length")][2].strip(WS)
        if not cl.isdigit() or len(cl) > 10:
            raise ParseError(status_for_error, "Content-Length not digits")
        body_end = body_start + int(cl)
        if body_end > ndata:
            raise ParseError(status_for_error, "Content-Length exceeds the datagram")
        msg.data = data if body_end == ndata else data[:body_end]
    else:
        msg.data = data
    msg._body_start = body_start

    # CSeq (RFC 3261 §8.1.1.5): number <= 2**32-1 and a method token.
    n = keys.index(b"cseq")
    cseq_raw = msg._value(n + 1) if folded else parts[n][2]
    cparts = cseq_raw.split()
    if not (
        len(cparts) == 2
        and cparts[0].isdigit()
        and len(cparts[0]) <= 10
        and int(cparts[0]) <= MAX_CSEQ
        and (not is_response or is_token(cparts[1]))
    ):
        try:
            parse_cseq(cseq_raw)
        except ParseError as exc:
            raise ParseError(status_for_error, exc.reason) from None
        # parse_cseq accepts what the fast check refused only via leading zeros.
        cparts = cseq_raw.split()
    msg._cseq_raw = cparts

    if is_response:
        return msg
    assert isinstance(msg, Request)
    if cparts[1] != msg.method:
        # RFC 4475 §3.1.2.17 (400) / §3.1.2.18 (501 preferred for an unknown method).
        status = 400 if msg.method in KNOWN_METHODS else 501
        raise ParseError(status, "CSeq method does not match the request method")
    if b"max-forwards" in present:
        if folded:
            mf = msg._value(keys.index(b"max-forwards") + 1)
        else:
            mf = parts[keys.index(b"max-forwards")][2].strip(WS)
        if not mf.isdigit():
            raise ParseError(400, "Max-Forwards not digits")
        # RFC 4475 §3.1.2.4: an absurdly large value is just "many"; avoid huge ints.
        msg.max_forwards = int(mf) if len(mf) <= 9 else 999_999_999
    else:
        msg.max_forwards = None
    return msg


def _parse_request_line(line: bytes) -> Request:
    # RFC 3261 §7.1: Method SP Request-URI SP SIP-Version, exactly one SP each
    # (RFC 4475 §3.1.2.8-10 lwsruri / lwsstart / trws are 400).
    parts = line.split(b" ")
    if len(parts) != 3:
        raise ParseError(400, "malformed Request-Line")
    method, ruri, version = parts
    if version != b"SIP/2.0":
        if version[:4] == b"SIP/" and b"." in version:
            raise ParseError(505, "SIP version not supported")
        raise ParseError(400, "malformed SIP-Version")
    if method not in KNOWN_METHODS and not is_token(method):
        raise ParseError(400, "malformed method")
    if not ruri or ruri.translate(None, _RURI_CHARS):
        raise ParseError(400, "malformed Request-URI")
    req = Request.__new__(Request)
    req.method = method
    req.request_uri = ruri
    return req


def _parse_status_line(line: bytes) -> Response:
    # RFC 3261 §7.2: SIP-Version SP Status-Code SP Reason-Phrase.  Any defect: drop
    # (RFC 3261 §16.7 has nobody to answer to; RFC 4475 §3.1.2.19 bigcode).
    parts = line.split(b" ", 2)
    if parts[0] != b"SIP/2.0":
        raise ParseError(None, "response with unsupported SIP version")
    if len(parts) < 2 or len(parts[1]) != 3 or not parts[1].isdigit():
        raise ParseError(None, "malformed status code")
    status = int(parts[1])
    if not 100 <= status <= 699:
        raise ParseError(None, "status code out of range")
    resp = Response.__new__(Response)
    resp.status = status
    resp.reason = parts[2] if len(parts) == 3 else b""
    return resp


# -- forwarding (RFC 3261 §16.6) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForwardPlan:
    """What to change when forwarding a request (RFC 3261 §16.6 as data).

    Attributes:
        via: full Via value to push, e.g. ``b"SIP/2.0/UDP 192.0.2.3:5060;branch=z9hG4bK.."``.
        request_uri: replacement Request-URI (None keeps it).
        record_route: Record-Route values to insert on top, first is top-most.
        pop_routes: number of top Route values to remove (they name us, §16.4).
        received: add/replace ``received=`` on the previous hop's Via (§18.2.1).
        rport: fill a bare ``;rport`` on the previous hop's Via (RFC 3581 §4).
    """

    via: bytes
    request_uri: bytes | None = None
    record_route: tuple[bytes, ...] = ()
    pop_routes: int = 0
    received: bytes | None = None
    rport: int | None = None


def _split_raw(raw: bytes, sep: bytes) -> list[bytes]:
    """Split at ``sep`` outside quotes/<> keeping every byte (no stripping)."""
    if b'"' not in raw and b"<" not in raw:
        return raw.split(sep)
    out: list[bytes] = []
    pos = 0
    while True:
        i = find_unquoted(raw, sep, pos)
        if i < 0:
            out.append(raw[pos:])
            return out
        out.append(raw[pos:i])
        pos = i + 1


def _mark_received(raw_line: bytes, received: bytes | None, rport: int | None) -> bytes:
    """Set received= / fill a bare rport on the first Via value of a raw (folded) line.

    Only the touched parameters change; every other byte of the line is kept.
    """
    colon = raw_line.find(b":") + 1
    comma = find_unquoted(raw_line, b",", colon)
    value_end = len(raw_line) if comma < 0 else comma
    value = raw_line[colon:value_end]
    low = value.lower()
    if b'"' not in value and b"received" not in low:
        # Fast path (the common case): no received= yet, rport absent or a plain ";rport".
        i = low.find(b";rport") if rport is not None else -1
        nxt = low[i + 6 : i + 7]
        if i < 0 or nxt in _RPORT_END:
            if i >= 0 and nxt != b"=":
                value = value[: i + 6] + b"=%d" % (rport or 0) + value[i + 6 :]
            if received is not None:
                stripped = value.rstrip(LWS)
                value = stripped + b";received=" + received + value[len(stripped) :]
            return raw_line[:colon] + value + raw_line[value_end:]
    pieces = _split_raw(value, b";")
    have_received = False
    for i in range(1, len(pieces)):
        piece = pieces[i]
        eq = piece.find(b"=")
        name = (piece if eq < 0 else piece[:eq]).strip(LWS).lower()
        if name == b"received" and received is not None:
            have_received = True
            lead = piece[: len(piece) - len(piece.lstrip(LWS))]
            tail = piece[len(piece.rstrip(LWS)) :]
            pieces[i] = lead + b"received=" + received + tail
        elif name == b"rport" and rport is not None and eq < 0:
            stripped = piece.rstrip(LWS)
            pieces[i] = stripped + b"=%d" % rport + piece[len(stripped) :]
    if received is not None and not have_received:
        last = pieces[-1]
        stripped = last.rstrip(LWS)
        pieces[-1] = stripped + b";received=" + received + last[len(stripped) :]
    return raw_line[:colon] + b";".join(pieces) + raw_line[value_end:]


def _drop_first_values(raw_line: bytes, count: int) -> tuple[bytes | None, int]:
    """Remove up to ``count`` leading comma values from a raw header line.

    Returns:
        (new raw line or None when no value remains, number of values removed).
    """
    colon = raw_line.find(b":") + 1
    pos = colon
    removed = 0
    while removed < count:
        comma = find_unquoted(raw_line, b",", pos)
        if comma < 0:
            return None, removed + 1
        pos = comma + 1
        removed += 1
    rest = raw_line[pos:]
    value = rest.lstrip(LWS)
    if not value:
        return None, removed
    # Keep the name and the whitespace after the colon exactly as received.
    after_colon = raw_line[colon:]
    lead = after_colon[: len(after_colon) - len(after_colon.lstrip(WS))]
    return raw_line[:colon] + lead + value, removed


def forward_request(req: Request, plan: ForwardPlan) -> bytes:
    """Serialise ``req`` as forwarded by this proxy (RFC 3261 §16.6).

    Steps (each cited): start line rewritten when ``plan.request_uri`` is set (step 6
    target), Max-Forwards decremented (step 3; inserted as 70 when absent; a decremented
    value above 70 is capped at 70 like Kamailio's maxfwd ``max_limit``), Record-Route
    inserted above existing ones (step 4; right after our Via when there are none), the
    top ``plan.pop_routes`` Route values removed (§16.4), ``received``/``rport`` set on the
    previous hop's Via (§18.2.1, RFC 3581), our Via pushed on top (step 8).  All other
    bytes are kept exactly (order, casing, compact forms, folding, body).

    Args:
        req: the parsed incoming request.
        plan: what to change.

    Returns:
        The outgoing message bytes.

    Raises:
        ProtocolViolation: when Max-Forwards is 0 (answer 483 instead, §16.3 step 3).
    """
    lines = req._lines
    keys = req._keys
    present = req._present
    folded = req._folded
    # Replacements keep line numbers stable: an inserted line rides in the same list slot
    # as its neighbour, joined with CRLF.  Deletions (folded continuations, popped Route
    # lines) are applied last, bottom up.
    out = lines[:]
    deleted: list[int] = []

    # Start line (RFC 3261 §16.6 step 6: Request-URI of the chosen target).
    if plan.request_uri is not None:
        out[0] = req.method + b" " + plan.request_uri + b" SIP/2.0"

    # Max-Forwards (step 3).
    mf = req.max_forwards
    if mf is None:
        out.append(_MF_DEFAULT_LINE)
    else:
        if mf <= 0:
            raise ProtocolViolation("Max-Forwards is 0: answer 483, do not forward")
        new_mf = b"%d" % (mf - 1 if mf <= MAX_FORWARDS_DEFAULT else MAX_FORWARDS_DEFAULT)
        n = keys.index(b"max-forwards")
        name, _, value = req._parts[n]
        n += 1
        if not folded or req._end_of(n) == n:
            # Keep the name and the spacing around the digits exactly as received.
            digits = value.strip(WS)
            lead = value.find(digits)
            out[n] = name + b":" + value[:lead] + new_mf + value[lead + len(digits) :]
        else:
            out[n] = name + b": " + new_mf
            deleted.extend(range(n + 1, req._end_of(n) + 1))

    # Route pop (§16.4): remove our own URI(s) from the top of the route set.
    if plan.pop_routes > 0 and b"route" in present:
        left = plan.pop_routes
        for n in req._indices(b"route"):
            m = req._end_of(n)
            raw = lines[n] if m == n else b"\r\n".join(lines[n : m + 1])
            new_raw, removed = _drop_first_values(raw, left)
            left -= removed
            if new_raw is None:
                deleted.append(n)
            else:
                out[n] = new_raw
            deleted.extend(range(n + 1, m + 1))
            if left <= 0:
                break

    # Previous hop's Via (§18.2.1 received, RFC 3581 rport), then our Via on top (step 8)
    # and Record-Route (step 4).
    v = keys.index(b"via") + 1
    top = lines[v]
    received = plan.received
    rport = plan.rport
    if received is not None or rport is not None:
        m = req._end_of(v) if folded else v
        if m != v:
            top = b"\r\n".join(lines[v : m + 1])
            deleted.extend(range(v + 1, m + 1))
        low = top.lower()
        i = low.find(b";rport")
        if (
            # Inline fast path: one Via value, no quotes, no received= yet, a plain
            # ";rport" flag (or none), nothing odd at the end of the line.
            b"received" not in low
            and b"," not in top
            and b'"' not in top
            and top[-1:] not in _LWS_BYTES
            and (i < 0 or low[i + 6 : i + 7] in _RPORT_END)
        ):
            if i >= 0 and rport is not None and low[i + 6 : i + 7] != b"=":
                top = b"%s=%d%s" % (top[: i + 6], rport, top[i + 6 :])
            if received is not None:
                top += b";received=" + received
        else:
            top = _mark_received(top, received, rport)
    ours = b"Via: " + plan.via
    record_route = plan.record_route
    if record_route:
        if len(record_route) == 1:
            rr = b"Record-Route: " + record_route[0]
        else:
            rr = b"\r\n".join([b"Record-Route: " + value for value in record_route])
        if b"record-route" in present:
            r = keys.index(b"record-route") + 1
            out[r] = rr + b"\r\n" + out[r]
        else:
            ours += b"\r\n" + rr
    out[v] = ours + b"\r\n" + top

    if deleted:
        for i in sorted(deleted, reverse=True):
            del out[i]
    out.append(req.data[req._body_start - 2 :])
    return b"\r\n".join(out)


def strip_top_via(resp: Response) -> bytes:
    """Remove the top-most Via value (ours) from a response (RFC 3261 §16.7 step 3).

    The caller must have checked that another Via remains (otherwise the response was
    meant for this element and is not forwarded).

    Returns:
        The response bytes to forward; everything else byte-exact.
    """
    lines = resp._lines
    v = resp._keys.index(b"via") + 1
    m = resp._end_of(v)
    raw = lines[v] if m == v else b"\r\n".join(lines[v : m + 1])
    new_raw, _ = _drop_first_values(raw, 1)
    out = lines[:v]
    if new_raw is not None:
        out += new_raw.split(b"\r\n")
    out += lines[m + 1 :]
    out.append(resp.data[resp._body_start - 2 :])
    return b"\r\n".join(out)


# -- locally built messages (RFC 3261 §8.2.6, §9.1, §17.1.1.3) -------------------------


def _header_line(name: bytes, value: bytes) -> bytes:
    return PRETTY_NAMES.get(name.lower(), name) + b": " + value


def _finish(lines: list[bytes], headers: Sequence[tuple[bytes, bytes]], body: bytes) -> bytes:
    for name, value in headers:
        lines.append(_header_line(name, value))
    lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"")
    lines.append(body)
    return b"\r\n".join(lines)


def _raw_lines(msg: Message, name: bytes) -> list[bytes]:
    out: list[bytes] = []
    for n in msg._indices(name):
        out.extend(msg._lines[n : msg._end_of(n) + 1])
    return out


def build_response(
    req: Request,
    status: int,
    reason: bytes | None = None,
    *,
    to_tag: bytes | None = None,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes = b"",
) -> bytes:
    """Build a response to ``req`` (RFC 3261 §8.2.6).

    Copies every Via line in order, From, To, Call-ID and CSeq verbatim; adds
    ``;tag=to_tag`` to the To when it has none and ``status > 100`` (§8.2.6.2).

    Args:
        req: the request being answered.
        status: 100..699.
        reason: reason phrase; the RFC 3261 §21 default when None.
        to_tag: the To tag to add when the request's To has none.
        headers: extra ``(name, value)`` header lines, e.g. ``(b"Unsupported", b"foo")``.
        body: the body (Content-Length is computed).

    Returns:
        The response bytes.
    """
    lines = [status_line(status, reason)]
    lines += _raw_lines(req, b"via")
    lines += _raw_lines(req, b"from")
    to_lines = _raw_lines(req, b"to")
    if to_tag is not None and status > 100 and req.to_tag is None:
        lines.append(b"To: " + req._value(req._keys.index(b"to") + 1) + b";tag=" + to_tag)
    else:
        lines += to_lines
    lines += _raw_lines(req, b"call-id")
    lines += _raw_lines(req, b"cseq")
    return _finish(lines, headers, body)


def build_request(
    method: bytes,
    request_uri: bytes,
    *,
    via: bytes,
    from_: bytes,
    to: bytes,
    call_id: bytes,
    cseq: int,
    max_forwards: int = MAX_FORWARDS_DEFAULT,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes = b"",
) -> bytes:
    """Build a request from scratch (RFC 3261 §8.1.1), e.g. an OPTIONS probe.

    Returns:
        The request bytes with Via, Max-Forwards, From, To, Call-ID, CSeq, the extra
        headers and Content-Length, in that order.
    """
    lines = [
        method + b" " + request_uri + b" SIP/2.0",
        b"Via: " + via,
        b"Max-Forwards: %d" % max_forwards,
        b"From: " + from_,
        b"To: " + to,
        b"Call-ID: " + call_id,
        b"CSeq: %d " % cseq + method,
    ]
    return _finish(lines, headers, body)


def _top_via_value(msg: Message) -> bytes:
    raw = msg._value(msg._keys.index(b"via") + 1)
    comma = find_unquoted(raw, b",")
    return raw if comma < 0 else raw[:comma].rstrip(LWS)


def build_cancel(invite: Request) -> bytes:
    """CANCEL for a client INVITE transaction (RFC 3261 §9.1).

    Same Request-URI, the top Via only (same branch), Call-ID, From, To, CSeq number with
    method CANCEL, and the Route set of the INVITE.

    Args:
        invite: the INVITE *as sent* by this element (its top Via is ours).
    """
    lines = [
        b"CANCEL " + invite.request_uri + b" SIP/2.0",
        b"Via: " + _top_via_value(invite),
        b"Max-Forwards: %d" % MAX_FORWARDS_DEFAULT,
    ]
    lines += _raw_lines(invite, b"route")
    lines += _raw_lines(invite, b"from")
    lines += _raw_lines(invite, b"to")
    lines += _raw_lines(invite, b"call-id")
    lines.append(b"CSeq: %d CANCEL" % invite.cseq.number)
    return _finish(lines, (), b"")


def build_ack(invite: Request, resp: Response) -> bytes:
    """ACK for a non-2xx final response (RFC 3261 §17.1.1.3).

    Request-URI, top Via, From, Call-ID and Route come from the INVITE; To comes from the
    response (it carries the tag); CSeq number is the INVITE's with method ACK.
    """
    lines = [
        b"ACK " + invite.request_uri + b" SIP/2.0",
        b"Via: " + _top_via_value(invite),
        b"Max-Forwards: %d" % MAX_FORWARDS_DEFAULT,
    ]
    lines += _raw_lines(invite, b"route")
    lines += _raw_lines(invite, b"from")
    lines += _raw_lines(resp, b"to")
    lines += _raw_lines(invite, b"call-id")
    lines.append(b"CSeq: %d ACK" % invite.cseq.number)
    return _finish(lines, (), b"")


def answer_parse_error(
    data: bytes, error: ParseError, *, to_tag: bytes | None = None
) -> bytes | None:
    """Best-effort stateless answer to a request that failed to parse (RFC 3261 §16.3).

    Scans the raw lines leniently for Via/From/To/Call-ID/CSeq and copies them.

    Args:
        data: the datagram that raised ``error``.
        error: the parse error (its status and extra headers are used).
        to_tag: a To tag to add when the To has none.

    Returns:
        The response bytes, or None when the error says drop, the datagram is a response,
        or the headers needed to address an answer cannot be found.
    """
    if error.status is None:
        return None
    try:
        data = data.lstrip(b"\r\n")
        if data[:4] == b"SIP/":
            return None
        end = data.find(b"\r\n\r\n")
        head = data if end < 0 else data[:end]
        found: dict[bytes, list[bytes]] = {}
        for line in head.split(b"\r\n")[1:]:
            c = line.find(b":")
            if c <= 0:
                continue
            key = canonical_name(line[:c])
            if key in _MANDATORY and key is not None:
                if b"\n" in line or b"\r" in line:
                    return None
                found.setdefault(key, []).append(line)
        if not found.keys() >= _MANDATORY:
            return None
        lines = [status_line(error.status)]
        lines += found[b"via"]
        lines.append(found[b"from"][0])
        to_line = found[b"to"][0]
        if to_tag is not None and b"tag=" not in to_line.lower():
            to_line += b";tag=" + to_tag
        lines.append(to_line)
        lines.append(found[b"call-id"][0])
        lines.append(found[b"cseq"][0])
        return _finish(lines, error.extra_headers, b"")
    except ParseError:
        return None
