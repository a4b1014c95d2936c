"""★ Hot path ★: SIP requests/responses as lazy views over the received bytes.

Theory of operation
-------------------
``parse()`` only *frames* a message, with a handful of C-level searches: the end of the
header block (``bytes.find(b"\\r\\n\\r\\n")``), the start line (method / Request-URI /
version, or status / reason), and Content-Length (digits only, within the datagram:
RFC 4475 §3.1.2.2-3, §3.3.9).  A header line always starts right after a CRLF and no
value holds a CRLF that is not followed by WSP (RFC 3261 §7.3.1), so the usual spellings
of Content-Length are found by one ``find``; anything unusual builds the index.

The *header index* is built on the first header access (:meth:`Message._index`): the
block is split into wire lines (one C call), every name is looked up in a precomputed
dict of common spellings and compact forms (:data:`sipedge.sip.grammar.CANONICAL`, no
``.lower()`` on the common path), and the structural rules that framing does not need
are checked in the same pass: no bare LF, the mandatory headers (RFC 3261 §8.1.1) and
singletons appearing once (RFC 4475 §3.3.8), CSeq number and method (§8.1.1.5, RFC 4475
§3.1.2.17-18), Max-Forwards digits (§20.22), no stray NUL, and the :class:`Limits`
(header lines, line length, Via values; the top Via's branch when it is parsed) -- the
split stops at the header limit, so a flood costs the limit.  Every accessor may therefore raise
:class:`ParseError`; :func:`sipedge.proxy.validation.validate_request` touches them
first, so ``parse`` + ``validate_request`` enforce what a strict parser would.
Interpreted values -- the top Via, From/To, CSeq -- are parsed on first access and
cached.  Folded header lines (§7.3.1) are recognised by their leading WSP and take a
slow path that unfolds them; they never raise.

Serialisation is splicing: the outgoing message is the original bytes with the few
spans we change replaced (start line, Max-Forwards, the previous hop's Via, Route) and
our new lines inserted (Via, Record-Route).  When no header has been accessed yet and
the message has the usual shape (our predecessor's Via first, Max-Forwards spelled as
usual), :func:`forward_request` and :func:`strip_top_via` work on the raw bytes -- one
``b"".join`` over slices -- without building the index at all.  Every other byte --
header order, casing, compact forms, odd whitespace, the body -- passes through
untouched.

Errors: ``parse`` raises :class:`ParseError` and nothing else, ever; neither does any
accessor.  The transforms do not re-check the structural rules: give them a request
that was validated (the proxy core always does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice, repeat
from operator import itemgetter
from typing import ClassVar, Final

from sipedge.sip.errors import ParseError, ProtocolViolation
from sipedge.sip.grammar import (
    CANONICAL,
    COMMA,
    DQUOTE,
    KNOWN_METHODS,
    LAQUOT,
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
    NameAddr,
    Via,
    find_unquoted,
    parse_cseq,
    parse_name_addr,
    parse_via,
    split_values,
    unfold,
)

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_BRANCH_BYTES",
    "MAX_HEADERS",
    "MAX_LINE_BYTES",
    "MAX_VIA",
    "ForwardPlan",
    "Limits",
    "Message",
    "Request",
    "Response",
    "answer_parse_error",
    "build_ack",
    "build_cancel",
    "build_request",
    "build_response",
    "call_id_of",
    "forward_request",
    "parse",
    "strip_top_via",
]

#: RFC 3261 §16.6 step 3 / §8.1.1.6: the value a proxy inserts when Max-Forwards is absent,
#: and the ceiling of what we forward (Kamailio maxfwd ``max_limit`` semantics).
MAX_FORWARDS_DEFAULT: Final = 70

# -- limits (issue 13): how much of a peer's message the parser is willing to look at --
#
# RFC 3261 sets no bound on the number or size of header fields, Via values or tokens; a
# stack without one spends work and memory in proportion to whatever a peer sends (the
# CVE history of SIP stacks: huge Via stacks and branches, header floods).  Past a limit
# the parser stops and raises at once, so the work is bounded by the limit, not by the
# message.  Status choice (RFC 3261 §21): what is beyond a limit is legal syntax that this
# server will not process, not a syntax error, so 400 would mislead the sender; §21.5.14
# 513 "Message Too Large" is the server saying "the message length exceeded its
# capabilities".  483 Too Many Hops is §16.3 step 3's answer to Max-Forwards 0 only, so a
# long Via stack is 513 "Too Many Via" as well (a real loop is caught by Max-Forwards and
# RFC 5393 loop detection).  A start line over the line limit is §21.4.12 414 "Request-URI
# Too Long" when the Request-URI is what is long.  On a response every limit means drop.

#: Header lines per message (folded continuation lines count as lines).
MAX_HEADERS: Final = 128
#: Bytes per wire line: the start line and every header line (CRLF excluded).
MAX_LINE_BYTES: Final = 8192
#: Via values per message (all Via lines, comma lists counted value by value).  RFC 3261
#: sets no bound; RFC 4475 §3.1.1.7 ``longreq``, which every element must accept, carries
#: 34, so 32 would refuse a valid torture message.  70 is the bound a conforming path
#: implies: a request that left its UAC with the recommended Max-Forwards 70 (§8.1.1.6)
#: and still may be forwarded (Max-Forwards >= 1) has passed at most 69 proxies, so it
#: carries at most 70 Via values.
MAX_VIA: Final = 70
#: Bytes of the top Via's branch parameter (our transaction key; RFC 3261 §8.1.1.7 has
#: no bound, real stacks use 20-70).
MAX_BRANCH_BYTES: Final = 256


@dataclass(frozen=True, slots=True)
class Limits:
    """What the parser accepts before it answers 513 (see the module constants).

    The proxy takes them from its settings (``ProxySettings.limits``); the defaults are
    the module constants.

    Attributes:
        max_headers: header lines per message.
        max_line_bytes: bytes per start or header line.
        max_via: Via values per message.
        max_branch_bytes: bytes of the top Via's branch.
    """

    max_headers: int = MAX_HEADERS
    max_line_bytes: int = MAX_LINE_BYTES
    max_via: int = MAX_VIA
    max_branch_bytes: int = MAX_BRANCH_BYTES


DEFAULT_LIMITS: Final = Limits()

_MANDATORY: Final = frozenset({b"via", b"from", b"to", b"call-id", b"cseq"})
#: The order in which a 400's reason phrase names missing headers (RFC 3261 §8.1.1).
_MANDATORY_ORDER: Final = (b"via", b"to", b"from", b"call-id", b"cseq")
_CONTINUATION: Final = (b" ", b"\t")
#: Bytes legal in a Request-URI on the start line: VCHAR without '<', '>' and '"'
#: (RFC 3261 §25.1; RFC 4475 §3.1.2.7 and §3.1.2.8).
_RURI_CHARS: Final = bytes(c for c in range(0x21, 0x7F) if c not in b'<>"')
#: What may follow ``;rport`` in the fast path of :func:`_mark_received`.
_RPORT_END: Final = (b"", b";", b"=")
_LWS_BYTES: Final = (b" ", b"\t", b"\r", b"\n")
#: WSP as byte values: a line starting with one continues the previous (RFC 3261 §7.3.1).
_WSP: Final = (32, 9)
_MF_DEFAULT_LINE: Final = b"Max-Forwards: %d" % MAX_FORWARDS_DEFAULT
_partition: Final = bytes.partition
_NAME: Final = itemgetter(0)
_CANON_GET: Final = CANONICAL.get
#: b"100".."699" -> int: validates a status code with one dict lookup (RFC 3261 §7.2).
_STATUS_CODES: Final = {b"%d" % code: code for code in range(100, 700)}
_SP_OR_CR: Final = (b" ", b"\r")
#: How the first header line starts when it is a Via in a usual spelling.
_VIA_LINE_STARTS: Final = (b"Via:", b"v:", b"VIA:", b"via:", b"Via :")
# The canonical key objects themselves (the values of CANONICAL): list.index/count
# compare by identity first, so looking these up never reaches a bytes comparison.
#: Header index of a message whose index failed to build (a real one is never empty).
_NO_INDEX: Final[list[bytes | None]] = []
#: Placeholders of a shed index (never mutated; ``_keys is None`` says "rebuild first").
_SHED_LINES: Final[list[bytes]] = []
_SHED_PARTS: Final[list[tuple[bytes, bytes, bytes]]] = []
_SHED_PRESENT: Final[set[bytes | None]] = set()
_VIA: Final = CANONICAL[b"via"]
_CSEQ: Final = CANONICAL[b"cseq"]
_CONTENT_LENGTH: Final = CANONICAL[b"content-length"]
_MAX_FORWARDS: Final = CANONICAL[b"max-forwards"]
_FROM: Final = CANONICAL[b"from"]
_TO: Final = CANONICAL[b"to"]
_CALL_ID: Final = CANONICAL[b"call-id"]
_RECORD_ROUTE: Final = CANONICAL[b"record-route"]
_ROUTE: Final = CANONICAL[b"route"]


class Message:
    """Common view over a parsed request or response (slotted, lazy, bytes only).

    :func:`parse` only frames the message: start line, end of the header block, body
    (Content-Length).  The *header index* -- the wire lines (``_lines[0]`` is the start
    line), the ``name:value`` partition of every header line, the canonical key of every
    header line (None for folded continuation lines) -- is built by :meth:`_index` on the
    first header access, together with the structural checks that are not needed for
    framing (mandatory and singleton headers, CSeq, Max-Forwards, bare LF).  So every
    accessor may raise :class:`ParseError`; the forwarding transforms work on the raw
    bytes when the index is not built yet.

    Attributes:
        data: the message bytes (trailing datagram noise cut off).
    """

    __slots__ = (
        "_body_start",
        "_cseq",
        "_cseq_raw",
        "_end",
        "_folded",
        "_from",
        "_keys",
        "_limits",
        "_lines",
        "_parts",
        "_present",
        "_sl",
        "_to",
        "_top_via",
        "_via",
        "data",
    )

    #: ParseError status for a structural defect found lazily (400 request, None drop).
    _ERROR_STATUS: ClassVar[int | None] = 400

    data: bytes
    _sl: int
    _end: int
    _body_start: int
    _keys: list[bytes | None] | None
    _limits: Limits
    _lines: list[bytes]
    _parts: list[tuple[bytes, bytes, bytes]]
    _present: set[bytes | None]
    _folded: bool
    _via: int
    _cseq: CSeq | None
    _cseq_raw: list[bytes]
    _top_via: Via | None
    _from: NameAddr | None
    _to: NameAddr | None

    # -- the header index (built once, on first use) -----------------------------------

    def _index(self) -> list[bytes | None]:
        """The canonical key of every header line, building the index on first use.

        Raises:
            ParseError: when the header block is structurally invalid (see
                :func:`_build_index`); raised again on every later access.
        """
        keys = self._keys
        if not keys:  # None: not built yet; _NO_INDEX: an earlier build failed
            keys = _build_index(self)
        return keys

    def _first_line(self, name: bytes) -> int | None:
        """Line number of the top-most header named ``name`` (canonical key), or None."""
        keys = self._index()
        if name not in self._present:
            return None
        return keys.index(name) + 1

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
        keys = self._index()
        if name not in self._present:
            return []
        first = keys.index(name)
        if keys.count(name) == 1:
            # The usual case; list.count is one C-level pass, no ValueError to catch.
            return [first + 1]
        return [i + 1 for i in range(first, len(keys)) if keys[i] == name]

    def shed(self) -> None:
        """Drop the header index; the next header access rebuilds it from ``data``.

        The index (a bytes object per header line, their partitions, the key list) costs
        about three times the message's own size and a dozen GC-tracked objects. A proxy
        keeps requests for the RFC 3261 wait timers (32 s over UDP) after it is done
        reading them: shedding the index then keeps what a held call costs near its bytes
        (issue 14). Headers parsed so far (top Via, CSeq, From, To) stay cached. A
        message whose index failed to build stays failed.
        """
        if self._keys:
            self._keys = None
            self._lines = _SHED_LINES
            self._parts = _SHED_PARTS
            self._present = _SHED_PRESENT

    # -- public accessors ---------------------------------------------------------------

    def header(self, name: bytes) -> bytes | None:
        """Value of the top-most header named ``name``.

        Args:
            name: canonical lowercase long form, e.g. ``b"call-id"``.

        Returns:
            The value with LWS stripped and folding unfolded, or None if absent.

        Raises:
            ParseError: the header block is invalid (first access builds the index).
        """
        n = self._first_line(name)
        if n is None:
            return None
        return self._value(n)

    def header_values(self, name: bytes) -> list[bytes]:
        """Every value of ``name``, top first, comma lists split (RFC 3261 §7.3.1).

        Raises:
            ParseError: 400 on an unterminated quoted string inside a list header, or an
                invalid header block.
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
        self._index()
        return name in self._present

    def header_lines(self) -> list[bytes]:
        """The raw header lines (folded ones included as separate wire lines)."""
        self._index()
        return self._lines[1:]

    @property
    def call_id(self) -> bytes:
        """The Call-ID (RFC 3261 §20.8)."""
        return self._value(self._index().index(_CALL_ID) + 1)

    @property
    def cseq(self) -> CSeq:
        """The CSeq, checked when the index is built (RFC 3261 §20.16)."""
        cseq = self._cseq
        if cseq is None:
            self._index()
            number, method = self._cseq_raw
            if len(number) > 10:
                # Leading zeros are legal (RFC 4475 §3.1.1.1) and unbounded; int() refuses
                # strings over 4300 digits (CPython's int_max_str_digits): drop them first.
                number = number.lstrip(b"0") or b"0"
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
            self._index()
            raw = self._raw_value(self._via)
            comma = find_unquoted(raw, b",")
            if comma < 0:
                via = parse_via(raw)
            else:
                # A Via list on the first Via line: the count limit of _build_index.
                limit = self._limits.max_via
                if raw.count(b",") >= limit:
                    _check_via_count(self, self._index(), limit, self._ERROR_STATUS)
                via = parse_via(raw[:comma])
            branch = via.branch
            if branch is not None and len(branch) > self._limits.max_branch_bytes:
                # Issue 13 limits: the branch keys our transaction tables (§17.2.3).
                status = self._ERROR_STATUS and 513
                raise ParseError(status, "Via branch over the limit", phrase=b"Branch Too Long")
            self._top_via = via
        return via

    @property
    def via_count(self) -> int:
        """Number of Via values in the message (all lines, comma lists split)."""
        return len(self.header_values(b"via"))

    @property
    def has_next_via(self) -> bool:
        """True when a Via value follows the top one (RFC 3261 §16.7 step 3).

        The cheap form of ``via_count > 1`` for every relayed response: a second Via line
        answers at once; only a lone line with a comma is split.

        Raises:
            ParseError: the header block is invalid.
        """
        keys = self._index()
        if keys.count(_VIA) > 1:
            return True
        n = self._first_line(_VIA)
        if n is None:
            return False
        value = self._value(n)
        return COMMA in value and len(split_values(value)) > 1

    @property
    def from_(self) -> NameAddr:
        """The From value (RFC 3261 §20.20), parsed on first use and cached.

        Raises:
            ParseError: 400 when the From value is malformed.
        """
        value = self._from
        if value is None:
            value = self._from = parse_name_addr(self._value(self._index().index(_FROM) + 1))
        return value

    @property
    def to(self) -> NameAddr:
        """The To value (RFC 3261 §20.39), parsed on first use and cached.

        Raises:
            ParseError: 400 when the To value is malformed.
        """
        value = self._to
        if value is None:
            value = self._to = parse_name_addr(self._value(self._index().index(_TO) + 1))
        return value

    @property
    def from_tag(self) -> bytes | None:
        """The From tag (RFC 3261 §8.1.1.3) or None.

        Raises:
            ParseError: 400 when the From value is malformed.
        """
        return self.from_.tag

    @property
    def to_tag(self) -> bytes | None:
        """The To tag (RFC 3261 §8.2.6.2) or None.

        Raises:
            ParseError: 400 when the To value is malformed.
        """
        return self.to.tag

    @property
    def body(self) -> bytes:
        """The body bytes exactly as received (never decoded)."""
        return self.data[self._body_start :]

    @property
    def start_line(self) -> bytes:
        """The start line as received."""
        return self.data[: self._sl]


class Request(Message):
    """A parsed SIP request.

    Attributes:
        method: e.g. ``b"INVITE"`` (case-sensitive, RFC 3261 §7.1).
        request_uri: the Request-URI bytes as received.
    """

    __slots__ = ("_max_forwards", "method", "request_uri")

    method: bytes
    request_uri: bytes
    _max_forwards: int | None

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards value (RFC 3261 §20.22), None when absent.

        Raises:
            ParseError: 400 when it is not digits (checked when the index is built).
        """
        self._index()
        return self._max_forwards

    @property
    def top_route(self) -> bytes | None:
        """The first Route value (raw name-addr) or None (RFC 3261 §16.4)."""
        n = self._first_line(_ROUTE)
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

    # RFC 3261 §16.7: a defective response is dropped, there is nobody to answer.
    _ERROR_STATUS = None

    status: int
    reason: bytes

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason!r}>"


# -- parser ----------------------------------------------------------------------------


def parse(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Request | Response:
    """Frame one datagram or one framed stream message (lazily: see :class:`Message`).

    Checks the start line, the end of the header block and Content-Length (RFC 3261
    §18.3 framing).  Bytes beyond Content-Length are ignored (RFC 4475 §3.1.1.8
    ``dblreq``); without a Content-Length the body is the rest of the datagram (RFC 3261
    §18.3, RFC 4475 §3.4.1).  The rest of RFC 3261's structural rules are checked on the
    first header access (:meth:`Message._index`); the §16.3 decisions are
    :func:`sipedge.proxy.validation.validate_request`'s.

    Args:
        data: the raw message bytes.
        limits: the header count / line / Via / branch limits (:class:`Limits`),
            checked when the header index is built (framing needs none of them).

    Returns:
        A :class:`Request` or :class:`Response` view over ``data``.

    Raises:
        ParseError: for anything malformed; ``status`` is what a proxy should answer with,
            None for "drop" (responses, unanswerable garbage), 513/414 past a limit.
            Nothing else escapes.
    """
    try:
        return _parse(data, limits)
    except ParseError:
        raise
    except Exception as exc:  # pragma: no cover - safety net; the fuzzers keep it unused
        raise ParseError(None, f"internal parser error: {type(exc).__name__}") from None


def _parse(data: bytes, limits: Limits) -> Request | Response:
    if type(data) is not bytes:
        data = bytes(data)
    if data[:2] == b"\r\n":
        # RFC 3261 §7.5: CRLFs before the start line are ignored (keep-alives).
        data = data.lstrip(b"\r\n")
        if not data:
            raise ParseError(None, "keep-alive only")
    end = data.find(b"\r\n\r\n")
    sl = data.find(b"\r\n")
    msg: Request | Response
    if data[:4] == b"SIP/":
        if end < 0:
            raise ParseError(None, "no empty line after the headers")
        # RFC 3261 §7.2 fast path: one dict hit validates the three digits and the
        # 100..699 range; anything unusual goes to the precise (raising) parser.
        status = _STATUS_CODES.get(data[8:11])
        if status is None or data[:8] != b"SIP/2.0 " or data[11:12] not in _SP_OR_CR:
            msg = _parse_status_line(data[:sl])
        else:
            # Cls.__new__(Cls) skips __init__; object.__new__(Cls) would too, but a
            # mypyc-compiled (native) class refuses it as unsafe.
            msg = Response.__new__(Response)
            msg.status = status
            msg.reason = data[12:sl]
        status_for_error = None
    else:
        if end < 0:
            # On a datagram the header block must be complete (framing.py: streams).
            raise ParseError(400, "no empty line after the headers")
        msg = _parse_request_line(data[:sl])
        status_for_error = 400
    if sl == end:
        # RFC 3261 §8.1.1: a request/response has at least the mandatory headers.
        raise ParseError(status_for_error, "no header lines")
    msg._sl = sl
    msg._end = end
    msg._limits = limits
    msg._keys = None
    msg._top_via = None
    msg._cseq = None
    msg._from = None
    msg._to = None
    body_start = msg._body_start = end + 4

    # Content-Length (RFC 3261 §20.14, §18.3): the framing.  The common spellings are
    # found with one C-level search (a header line starts right after a CRLF and no
    # value holds a CRLF not followed by WSP), backwards because stacks put it last;
    # anything else builds the index (which also rejects a second Content-Length).
    i = data.rfind(b"\r\nContent-Length:", sl, end)
    if i >= 0:
        i += 17
    else:
        i = data.find(b"\r\nl:", sl, end)
        if i >= 0:
            i += 4
    if i >= 0:
        j = data.find(b"\r\n", i)
        cl = data[i:j].strip(WS)
        if not cl or data[j + 2 : j + 3] in _CONTINUATION:
            i = -1  # empty (folded?) value: let the index find and check it
    if i < 0:
        msg.data = data
        keys = _build_index(msg)
        if _CONTENT_LENGTH not in msg._present:
            return msg
        cl = msg._value(keys.index(_CONTENT_LENGTH) + 1)
    # RFC 3261 §20.14: 1*DIGIT, so "-1", "0x10", "" are 400.  Nothing above 2**32-1 is
    # accepted either (Kamailio sanity's bound): a C stack downstream would wrap it.
    if not cl.isdigit() or (len(cl) > 9 and (len(cl) > 10 or int(cl) > MAX_CSEQ)):
        raise ParseError(status_for_error, "Content-Length not digits",
                         phrase=b"Bad Content-Length")
    body_end = body_start + int(cl)
    ndata = len(data)
    if body_end > ndata:
        # RFC 3261 §18.3: a datagram ending before the body is an error; requests 400.
        raise ParseError(status_for_error, "Content-Length exceeds the datagram",
                         phrase=b"Truncated Body")
    msg.data = data if body_end == ndata else data[:body_end]
    return msg


def _start_line_too_long(data: bytes, sl: int) -> None:
    """Raise for a start line over ``Limits.max_line_bytes`` (see the limits comment).

    Only the start line is looked at (it is over the limit already): 414 when it is the
    Request-URI that is long (RFC 3261 §21.4.12), else 513; a response is dropped.
    """
    if data[:4] == b"SIP/":
        raise ParseError(None, "status line over the line limit")
    sp = data.find(b" ", 0, sl)
    if 0 <= sp < sl // 2:
        raise ParseError(414, "Request-URI over the line limit")
    raise ParseError(513, "request line over the line limit", phrase=b"Request Line Too Long")


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
                raise ParseError(status, "continuation line before any header",
                                 phrase=b"Bad Header Line")
            folded = True
            continue
        c = line.find(b":")
        if c < 0:
            raise ParseError(status, "header line without colon", phrase=b"Bad Header Line")
        key = canonical_name(line[:c])
        if key is None:
            # Not a token (RFC 3261 §7.3.1, §25.1): empty, SP inside, CTL, NUL, DEL, 8-bit.
            # The phrase never names it: the name is the peer's bytes.
            raise ParseError(status, "malformed header name", phrase=b"Bad Header Name")
        keys[i] = key


def _check_nul(head: bytes, status: int | None) -> None:
    """Raise unless every NUL of the header block is a quoted-pair (RFC 3261 §25.1).

    NUL is legal only as ``"\\" %x00`` inside a quoted string (RFC 4475 §3.1.1.3
    ``intmeth``); anywhere else a C stack downstream ends the string there and sees a
    different header (the NUL-truncation class of SIP CVEs).
    """
    i = head.find(b"\0")
    while i >= 0:
        if head[i - 1 : i] != b"\\":
            raise ParseError(status, "NUL in header block", phrase=b"NUL In Header")
        i = head.find(b"\0", i + 1)


def _check_via_count(
    msg: Message, keys: list[bytes | None], max_via: int, status: int | None
) -> None:
    """Raise 513 when ``msg`` has more than ``max_via`` Via values (exact count).

    Runs while the index is being built (``keys`` is not stored yet), and stops at the
    Via line that takes the count over the limit.
    """
    count = 0
    for n, key in enumerate(keys, 1):
        if key != _VIA:
            continue
        value = msg._value(n)
        if COMMA in value:
            try:
                count += len(split_values(value))
            except ParseError:  # unterminated quote: every comma may separate values
                count += value.count(b",") + 1
        else:
            count += 1
        if count > max_via:
            raise ParseError(status and 513, "more Via values than the limit",
                             phrase=b"Too Many Via")


def _check_singletons(keys: list[bytes | None], status: int | None) -> None:
    """Raise when a header that MUST appear at most once repeats (RFC 4475 §3.3.8-9)."""
    for key in SINGLETON_HEADERS:
        if keys.count(key) > 1:
            # Two Content-Length are refused even when equal (RFC 3261 §20.14 has one;
            # a downstream that reads the other one would frame a different message).
            raise ParseError(status, f"duplicate {key.decode()} header",
                             phrase=b"Duplicate " + PRETTY_NAMES[key])


def _build_index(msg: Message) -> list[bytes | None]:
    """Build the header index of ``msg`` and run the structural checks.

    One pass over the header lines as C-level maps: ``name:value`` partition, then the
    canonical key by dict lookup (common spellings and compact forms precomputed, so no
    ``.lower()`` on the common path).  Checks: no bare LF, every line a header or a fold
    (RFC 3261 §7.3.1), the mandatory headers (§8.1.1) present, singletons once (RFC 4475
    §3.3.8-9), CSeq number and method (§8.1.1.5, RFC 4475 §3.1.2.17-18), Max-Forwards
    digits (§20.22).  The index is stored only when every check passed.

    Raises:
        ParseError: with the message's error status (400 for requests, 501 for a CSeq
            method mismatch on an unknown method, None for responses).
    """
    # Until every check passed the message counts as broken, not as unindexed: the raw
    # forwarding paths must never take a message that failed here.
    msg._keys = _NO_INDEX
    status = msg._ERROR_STATUS
    limits = msg._limits
    head = msg.data[: msg._end]
    # Limits first, and the split itself stops at the limit: with maxsplit the C-level
    # split never looks past the (max_headers + 1)-th CRLF, so a header flood costs the
    # limit, not its size.  The start line was checked by parse().
    max_headers = limits.max_headers
    lines = head.split(b"\r\n", max_headers + 1)
    nheaders = len(lines) - 1
    if nheaders > max_headers:
        raise ParseError(status and 513, "more header lines than the limit",
                         phrase=b"Too Many Headers")
    max_line = limits.max_line_bytes
    if msg._end > max_line and max(map(len, lines)) > max_line:
        # Only a header block longer than one line's limit can hold a long line: the
        # usual message pays one comparison.
        if len(lines[0]) > max_line:
            _start_line_too_long(msg.data, msg._sl)
        raise ParseError(status and 513, "header line over the line limit",
                         phrase=b"Header Too Long")
    # A bare LF inside the header block would let a lenient downstream parser (many
    # accept LF line ends) see a different message (header injection): reject.  A bare
    # CR is caught by the value parsers of the headers we interpret.
    if head.count(b"\n") != nheaders:
        raise ParseError(status, "bare LF in header block", phrase=b"Bad Line Ending")
    if head.find(b"\0") >= 0:  # memchr; ``in`` takes a slower path for bytes
        _check_nul(head, status)
    parts = list(map(_partition, islice(lines, 1, None), repeat(b":")))
    keys: list[bytes | None] = list(map(_CANON_GET, map(_NAME, parts)))
    present = set(keys)
    folded = False
    if None in present:
        folded = _classify_slow(lines, keys, status)
        present = set(keys)
        present.discard(None)
        # Continuation lines are None: count only real header lines below.
        nheaders -= keys.count(None)
    repeats = nheaders - len(present)
    if repeats and repeats != keys.count(_VIA) - 1:
        # Some name other than Via repeats (several Via lines are the common case of a
        # response): it must not be a singleton (RFC 4475 §3.3.8, §3.3.9).
        _check_singletons(keys, status)
    if not present >= _MANDATORY:
        # RFC 3261 §8.1.1: To, From, CSeq, Call-ID, Via are mandatory (RFC 4475 §3.3.1);
        # Max-Forwards is not required here: a proxy adds it (§16.6 step 3).  The phrase
        # names what is missing (§21.4.1), e.g. "Missing Call-ID".
        names = [PRETTY_NAMES[k] for k in _MANDATORY_ORDER if k not in present]
        missing = b", ".join(names)
        raise ParseError(status, f"missing mandatory header(s): {missing.decode()}",
                         phrase=b"Missing " + missing)
    msg._lines = lines
    msg._parts = parts
    msg._present = present
    msg._folded = folded
    msg._via = keys.index(_VIA) + 1
    # Via values (issue 13 limits).  A request usually repeats no header name, so it has
    # one Via line, whose comma list :attr:`Message.top_via` checks (it looks for the
    # comma anyway).  Several Via lines: every Via value but the last of a line ends at a
    # comma, so Via lines + commas in the header block bound the count from above (two C
    # calls); only a block over that bound is counted exactly.
    if repeats and keys.count(_VIA) + head.count(b",", len(lines[0])) > limits.max_via:
        _check_via_count(msg, keys, limits.max_via, status)

    # CSeq (RFC 3261 §8.1.1.5): number <= 2**32-1 and a method token; the CSeq value
    # itself is built on first use.
    n = keys.index(_CSEQ)
    cseq_raw = msg._value(n + 1) if folded else parts[n][2]
    cparts = cseq_raw.split()
    # Up to 9 digits always fit in 32 bits: no int() on the common path. Exactly 10 may
    # or may not; longer ones (leading zeros, or too big) go to parse_cseq, which strips
    # the zeros before any int(): CPython refuses int() of over 4300 digits (ValueError).
    if not (
        len(cparts) == 2
        and cparts[0].isdigit()
        and (len(cparts[0]) < 10 or (len(cparts[0]) == 10 and int(cparts[0]) <= MAX_CSEQ))
        and (status is not None or is_token(cparts[1]))
    ):
        try:
            parse_cseq(cseq_raw)
        except ParseError as exc:
            raise ParseError(status, exc.reason, phrase=b"Bad CSeq") from None
        # parse_cseq accepts what the fast check refused only via leading zeros.
        cparts = cseq_raw.split()
    msg._cseq_raw = cparts

    if isinstance(msg, Request):
        if cparts[1] != msg.method:
            # RFC 4475 §3.1.2.17 (400) / §3.1.2.18 (501 preferred for an unknown method).
            code = 400 if msg.method in KNOWN_METHODS else 501
            raise ParseError(code, "CSeq method does not match the request method",
                             phrase=b"CSeq Method Mismatch")
        if _MAX_FORWARDS in present:
            mf = msg._value(keys.index(_MAX_FORWARDS) + 1)
            if not mf.isdigit():
                raise ParseError(400, "Max-Forwards not digits", phrase=b"Bad Max-Forwards")
            # RFC 4475 §3.1.2.4: an absurdly large value is just "many"; avoid huge ints.
            msg._max_forwards = int(mf) if len(mf) <= 9 else 999_999_999
        else:
            msg._max_forwards = None
    msg._keys = keys
    return keys


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


# -- Call-ID without a parse (worker steering) --------------------------------------------

#: The usual spelling of a Call-ID header line: one C-level search finds it.
_CALL_ID_LINE: Final = b"\r\nCall-ID:"
#: Where the value starts after a match of :data:`_CALL_ID_LINE`.
_CALL_ID_VALUE_OFFSET: Final = len(_CALL_ID_LINE)
#: A header name that means Call-ID, lowercased (RFC 3261 §20.8 and its compact form).
_CALL_ID_NAMES: Final = (b"call-id", b"i")
_CR: Final = 0x0D
_LOWER_C: Final = 0x63
_LOWER_I: Final = 0x69
_ASCII_LOWER_BIT: Final = 0x20


def call_id_of(data: bytes) -> bytes | None:
    """The Call-ID of a raw request or response, by byte search (no parse, no index).

    For the shell of a multi-process edge, which hashes it to pick the worker that owns
    the call (``proxy.steering``) before any worker parsed the datagram: it must cost far
    less than :func:`parse`, and it must say what ``parse(data).call_id`` says for every
    message the parser accepts, or two messages of one call could land on two workers.

    The usual spelling is found with one C-level search, ``\\r\\nCall-ID:`` (a header line
    starts right after a line end, and no value holds a line end not followed by WSP, RFC
    3261 §7.3.1), checked to lie before the end of the header block. Anything else --
    other casings, the compact form ``i``, WSP before the colon -- takes a scan of the
    header line starts, which stops at the empty line ending the headers, so a body
    (``message/sipfrag``, ``message/sip``) is never read. The scan takes a bare LF as a
    line end too: ``parse`` refuses such a message (answered 400 by whichever worker gets
    it), but its Call-ID is still the one a lenient reader would see. Whatever the bytes,
    the same bytes give the same answer, which is all steering needs of a message the
    parser refuses. Leading CRLFs (RFC 3261 §7.5 keep-alives) are skipped as ``parse``
    skips them.

    Args:
        data: one datagram or one framed stream message.

    Returns:
        The value with surrounding whitespace stripped and folding unfolded (exactly as
        :attr:`Message.call_id`), ``b""`` for an empty Call-ID, None when there is no
        Call-ID header. Never raises.
    """
    if data[:2] == b"\r\n":
        data = data.lstrip(b"\r\n")  # as parse(): CRLFs before the start line are ignored
    i = data.find(_CALL_ID_LINE)
    # In the header block: the block's end (parse()'s first CRLF CRLF) is not before the
    # line at i; the bound makes the search cover exactly the bytes that would say so.
    if i >= 0 and data.find(b"\r\n\r\n", 0, i + 2) < 0:
        return _field_value(data, i + _CALL_ID_VALUE_OFFSET)
    return _scan_call_id(data)


def _scan_call_id(data: bytes) -> bytes | None:
    """:func:`call_id_of`'s slow path: every header line start, case-insensitively."""
    size = len(data)
    nl = data.find(b"\n")  # the end of the start line
    while nl >= 0:
        start = nl + 1
        nl = data.find(b"\n", start)
        stop = size if nl < 0 else nl
        if nl >= 0 and stop > start and data[stop - 1] == _CR:
            stop -= 1
        if stop == start:
            return None  # the empty line: the headers ended without a Call-ID
        # Only names starting with c or i can be Call-ID: no slice for the other lines
        # (a continuation line starts with WSP and is skipped the same way).
        initial = data[start] | _ASCII_LOWER_BIT
        if initial != _LOWER_C and initial != _LOWER_I:
            continue
        colon = data.find(b":", start, stop)
        if colon < 0:
            continue
        name = data[start:colon].rstrip(WS)  # RFC 3261 §7.3.1 allows WSP before the colon
        if (len(name) == 7 or len(name) == 1) and name.lower() in _CALL_ID_NAMES:
            return _field_value(data, colon + 1)
    return None


def _field_value(data: bytes, start: int) -> bytes:
    """The header value starting at ``start`` (after the colon), as the index returns it.

    The value runs to the first line end not followed by WSP (folded lines included) and
    is stripped like :meth:`Message._value`: unfolded and LWS-stripped when folded, else
    WS-stripped. A bare CR at either end of an unfolded value is stripped only when the
    header block holds a folded line anywhere, because that is when the index strips
    every value of LWS.
    """
    size = len(data)
    end = data.find(b"\n", start)
    if end < 0:
        end = size  # no line end at all: parse() refuses this; still an answer
    folded = False
    while end + 1 < size and data[end + 1] in _WSP:
        folded = True
        end = data.find(b"\n", end + 1)
        if end < 0:
            end = size
    stop = end - 1 if end < size and end > start and data[end - 1] == _CR else end
    raw = data[start:stop]
    if folded:
        return unfold(raw).strip(LWS)
    value = raw.strip(WS)
    if value and (value[0] == _CR or value[-1] == _CR) and _has_folded_line(data):
        return value.strip(LWS)
    return value


def _has_folded_line(data: bytes) -> bool:
    """True when a header line of ``data`` is a continuation (starts with WSP)."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end]
    return head.find(b"\n ") >= 0 or head.find(b"\n\t") >= 0


# -- forwarding (RFC 3261 §16.6) ---------------------------------------------------------


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

    # A plain class, not a frozen dataclass: mypyc compiles its ``__init__``, ``__eq__``
    # and ``__hash__`` natively (a dataclass's generated methods stay interpreted).
    # Same semantics: Final (read-only) fields, value equality and hash, the repr.
    __slots__ = ("pop_routes", "received", "record_route", "request_uri", "rport", "via")

    via: Final[bytes]
    request_uri: Final[bytes | None]
    record_route: Final[tuple[bytes, ...]]
    pop_routes: Final[int]
    received: Final[bytes | None]
    rport: Final[int | None]

    def __init__(
        self,
        via: bytes,
        request_uri: bytes | None = None,
        record_route: tuple[bytes, ...] = (),
        pop_routes: int = 0,
        received: bytes | None = None,
        rport: int | None = None,
    ) -> None:
        self.via = via
        self.request_uri = request_uri
        self.record_route = record_route
        self.pop_routes = pop_routes
        self.received = received
        self.rport = rport

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ForwardPlan):
            return NotImplemented
        return (self.via == other.via and self.request_uri == other.request_uri
                and self.record_route == other.record_route
                and self.pop_routes == other.pop_routes
                and self.received == other.received and self.rport == other.rport)

    def __hash__(self) -> int:
        return hash((self.via, self.request_uri, self.record_route, self.pop_routes, self.received,
                     self.rport))

    def __repr__(self) -> str:
        return (f"{type(self).__qualname__}(via={self.via!r}, request_uri={self.request_uri!r}, "
                f"record_route={self.record_route!r}, pop_routes={self.pop_routes!r}, "
                f"received={self.received!r}, rport={self.rport!r})")


def _split_raw(raw: bytes, sep: bytes) -> list[bytes]:
    """Split at ``sep`` outside quotes/<> keeping every byte (no stripping)."""
    if DQUOTE not in raw and LAQUOT not in raw:
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
    if DQUOTE not in value and low.find(b"received") < 0:
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
    inserted above existing ones (step 4; right after our Via), the
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
        ParseError: when the header index has to be built and the block is invalid.
    """
    if req._keys is None and plan.pop_routes <= 0:
        # Nobody has looked at the headers yet: splice the raw bytes when the message
        # has the common shape (see _forward_raw), without building the index.
        raw = _forward_raw(req, plan)
        if raw is not None:
            return raw
    mf = req.max_forwards
    if mf is not None and mf <= 0:
        raise ProtocolViolation("Max-Forwards is 0: answer 483, do not forward")
    if req._folded or plan.pop_routes > 0:
        return _forward_general(req, plan)
    lines = req._lines
    out = lines[:]
    # Start line (RFC 3261 §16.6 step 6: Request-URI of the chosen target).
    if plan.request_uri is not None:
        out[0] = req.method + b" " + plan.request_uri + b" SIP/2.0"
    # Max-Forwards (step 3): the digits are replaced in place, the name and the spacing
    # around them are kept as received.
    if mf is None:
        out.append(_MF_DEFAULT_LINE)
    else:
        n = req._index().index(_MAX_FORWARDS)
        digits = req._parts[n][2].strip(WS)
        line = lines[n + 1]
        # The stripped value is all digits and ends the line (bar WSP): its last
        # occurrence is the value itself.
        i = line.rfind(digits)
        out[n + 1] = b"%s%d%s" % (
            line[:i], mf - 1 if mf <= MAX_FORWARDS_DEFAULT else MAX_FORWARDS_DEFAULT,
            line[i + len(digits) :],
        )
    # Previous hop's Via (§18.2.1 received, RFC 3581 rport), our Via on top (step 8),
    # Record-Route (step 4) above any existing one.
    v = req._via
    top = lines[v]
    if plan.received is not None or plan.rport is not None:
        top = _mark_top_via(top, plan.received, plan.rport)
    ours = b"Via: " + plan.via
    if plan.record_route:
        ours = _insert_record_route(req, plan.record_route, ours, out)
    out[v] = ours + b"\r\n" + top
    out.append(req.data[req._body_start - 2 :])
    return b"\r\n".join(out)


def _insert_record_route(
    req: Request, record_route: tuple[bytes, ...], ours: bytes, out: list[bytes]
) -> bytes:
    """Put our Record-Route line(s) above every existing one (RFC 3261 §16.6 step 4).

    Right below our Via (the order of header lines only matters between lines of the
    same name, §7.3.1), unless a Record-Route line sits above the top Via: then just
    above it, in ``out``.  Returns ``ours`` (our Via line) with what goes below it.
    """
    rr = b"\r\n".join([b"Record-Route: " + value for value in record_route])
    keys = req._index()
    if _RECORD_ROUTE in req._present:
        r = keys.index(_RECORD_ROUTE) + 1
        if r < req._via:
            out[r] = rr + b"\r\n" + out[r]
            return ours
    return ours + b"\r\n" + rr


def _forward_raw(req: Request, plan: ForwardPlan) -> bytes | None:
    """:func:`forward_request` over the raw bytes, or None when the shape is unusual.

    The common shape: the previous hop's Via is the first header line (so everything
    we insert goes right below the start line, above every existing Via and
    Record-Route), neither it nor Max-Forwards is folded, Max-Forwards is spelled as
    usual.  A header line starts right after a CRLF and a value never holds a CRLF
    that is not followed by WSP (RFC 3261 §7.3.1), so a C-level search finds it.  The
    output is one join over slices of the received bytes.
    """
    data = req.data
    sl = req._sl
    if not data.startswith(_VIA_LINE_STARTS, sl + 2):
        return None
    q = data.find(b"\r\n", sl + 2)
    m = data.find(b"\r\nMax-Forwards:", q, req._end)
    if m < 0 or data[q + 2] in _WSP:
        return None
    m += 15
    me = data.find(b"\r\n", m)
    if data[m] == 32:  # the usual single SP after the colon
        m += 1
    digits = data[m:me]
    if not digits.isdigit() or data[me + 2] in _WSP:
        return None  # odd spacing, folding or not digits: the index path decides
    # RFC 3261 §16.6 step 3 (Kamailio max_limit: never forward more than 70).
    mf = int(digits) if len(digits) <= 9 else 999_999_999
    if mf <= 0:
        raise ProtocolViolation("Max-Forwards is 0: answer 483, do not forward")
    top = data[sl + 2 : q]
    if plan.received is not None or plan.rport is not None:
        top = _mark_top_via(top, plan.received, plan.rport)
    request_uri = plan.request_uri
    record_route = plan.record_route
    return b"".join(
        (
            data[:sl] if request_uri is None
            else req.method + b" " + request_uri + b" SIP/2.0",
            b"\r\nVia: ",
            plan.via,
            b"" if not record_route
            else b"\r\nRecord-Route: " + record_route[0] if len(record_route) == 1
            else b"".join([b"\r\nRecord-Route: " + value for value in record_route]),
            b"\r\n",
            top,
            data[q:m],
            b"%d" % (mf - 1 if mf <= MAX_FORWARDS_DEFAULT else MAX_FORWARDS_DEFAULT),
            data[me:],
        )
    )


def _mark_top_via(top: bytes, received: bytes | None, rport: int | None) -> bytes:
    """received= / rport= on the previous hop's Via line (§18.2.1, RFC 3581 §4)."""
    low = top.lower()
    i = low.find(b";rport")
    nxt = low[i + 6 : i + 7]
    if (
        # Inline fast path: one Via value without quoted strings (so what we find is a
        # parameter, not text inside one), no received= yet, a plain ";rport" flag or
        # none.  Trailing WSP is fine: SEMI = SWS ";" SWS (RFC 3261 §25.1).
        len(low.translate(None, b',"')) == len(low)
        and low.find(b"received") < 0
        and (i < 0 or nxt in _RPORT_END)
    ):
        if i >= 0 and rport is not None and nxt != b"=":
            top = b"%s=%d%s" % (top[: i + 6], rport, top[i + 6 :])
        if received is not None:
            top += b";received=" + received
        return top
    return _mark_received(top, received, rport)


def _forward_general(req: Request, plan: ForwardPlan) -> bytes:
    """:func:`forward_request` for folded messages and Route popping (line deletions)."""
    keys = req._index()
    lines = req._lines
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
    v = req._via
    top = lines[v]
    received = plan.received
    rport = plan.rport
    if received is not None or rport is not None:
        m = req._end_of(v) if folded else v
        if m != v:
            top = b"\r\n".join(lines[v : m + 1])
            deleted.extend(range(v + 1, m + 1))
        top = _mark_top_via(top, received, rport)
    ours = b"Via: " + plan.via
    if plan.record_route:
        ours = _insert_record_route(req, plan.record_route, ours, out)
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
    data = resp.data
    if resp._keys is None:
        # Nobody has looked at the headers yet: when our Via is alone on the first header
        # line, cut that line out of the raw bytes (two slices, no index).
        sl = resp._sl
        p = sl + 2
        if data.startswith(_VIA_LINE_STARTS, p):
            q = data.find(b"\r\n", p)
            if data.find(b",", p, q) < 0 and data[q + 2 : q + 3] not in _CONTINUATION:
                return data[:sl] + data[q:]
    resp._index()
    lines = resp._lines
    v = resp._via
    line = lines[v]
    if COMMA not in line and not resp._folded:
        # Fast path: the top Via line holds one value (ours), so the whole line goes.
        # Two slices of the received bytes; the offset is the lengths of the lines above.
        start = len(lines[0]) + 2 if v == 1 else sum(map(len, lines[:v])) + 2 * v
        return data[:start] + data[start + len(line) + 2 :]
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
        lines.append(b"To: " + req._value(req._index().index(_TO) + 1) + b";tag=" + to_tag)
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
    msg._index()
    raw = msg._value(msg._via)
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
    data: bytes,
    error: ParseError,
    *,
    to_tag: bytes | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> bytes | None:
    """Best-effort stateless answer to a request that failed to parse (RFC 3261 §16.3).

    Scans the raw lines leniently for Via/From/To/Call-ID/CSeq and copies the ones it
    finds (§8.2.6.2).  Only the Via is required: it is what the answer is routed and
    matched by (§18.2.2, §17.1.3), so a request missing From, To, Call-ID or CSeq still
    gets its 400 naming what is missing.  The scan is bounded like the parser's (at most
    ``limits.max_headers`` lines; a line over ``limits.max_line_bytes``, or holding a CR,
    LF or NUL, is not copied), and the reason phrase is ``error.phrase``, never peer bytes.

    Args:
        data: the datagram that raised ``error``.
        error: the parse error (its status, phrase and extra headers are used).
        to_tag: a To tag to add when the To has none.
        limits: the parser limits the scan respects.

    Returns:
        The response bytes, or None when the error says drop, the datagram is a response,
        or there is no parsable top Via to answer to.
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
        max_line = limits.max_line_bytes
        lines = head.split(b"\r\n", limits.max_headers + 1)[1 : limits.max_headers + 1]
        for line in lines:
            c = line.find(b":")
            if c <= 0 or len(line) > max_line:
                continue
            key = canonical_name(line[:c])
            if key in _MANDATORY and key is not None:
                if b"\n" in line or b"\r" in line or b"\0" in line:
                    continue  # never copy what could split or end a line downstream
                found.setdefault(key, []).append(line)
        vias = found.get(b"via")
        if not vias:
            return None
        top = vias[0].partition(b":")[2]
        comma = find_unquoted(top, b",")
        parse_via(top if comma < 0 else top[:comma])  # raises: nothing to answer to
        out = [status_line(error.status, error.phrase)]
        out += vias
        for key in (b"from", b"to", b"call-id", b"cseq"):
            values = found.get(key)
            if values is None:
                continue
            line = values[0]
            if key == b"to" and to_tag is not None and b"tag=" not in line.lower():
                line += b";tag=" + to_tag
            out.append(line)
        return _finish(out, error.extra_headers, b"")
    except ParseError:
        return None
