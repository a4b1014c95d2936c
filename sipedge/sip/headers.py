"""On-demand parsers for the few header values a proxy interprets.

Only Via, CSeq and name-addr (From/To/Contact/Route/Record-Route) are ever interpreted, and
the Retry-After of a 503; every other header is carried as opaque bytes (RFC 3261 §16.6: a
proxy forwards what it does not understand).  The functions here take one *value* (already
cut out of the header block by :mod:`sipedge.sip.message`, possibly still folded) and return
frozen slotted values.  A malformed value raises :class:`ParseError` with status 400 --
nothing else escapes -- except Retry-After, which is advice: a malformed one reads as absent.
"""

from __future__ import annotations

import hashlib
from typing import Final

from sipedge.sip.errors import ParseError
from sipedge.sip.grammar import (
    COMMA,
    DIGITS,
    DQUOTE,
    HTAB,
    LAQUOT,
    LF,
    LWS,
    MAX_CSEQ,
    QMARK,
    SP,
    TOKEN_CHARS,
    WS,
    is_token,
)

__all__ = [
    "CSeq",
    "NameAddr",
    "Param",
    "Via",
    "find_unquoted",
    "make_branch",
    "parse_cseq",
    "parse_name_addr",
    "parse_params",
    "parse_retry_after",
    "parse_via",
    "split_host_port",
    "split_values",
    "unfold",
]

#: RFC 3261 §8.1.1.7 / §16.11: branch values of RFC 3261 elements start with this cookie.
MAGIC_COOKIE: Final = b"z9hG4bK"

#: A header/URI parameter: (lowercase name, raw value or None for a bare flag).
Param = tuple[bytes, bytes | None]

_HOST_CHARS: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-."
_IPV6_CHARS: Final = b"0123456789abcdefABCDEF:."
_SCHEME_CHARS: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-."
#: Bytes that end or break a URI in a header (LWS and the name-addr delimiters).
_NOT_IN_URI: Final = b' \t\r\n<>"'
#: Bytes never inside an unquoted parameter value (RFC 3261 §25.1 gen-value).
_NOT_IN_VALUE: Final = b' \t\r\n"'
#: Bytes that send a parameter list to the general (quote/angle-aware) splitter.
_NOT_IN_PARAMS: Final = b' \t\r\n"<'
#: Bytes that send a Via value to the general (LWS/folding/quoting-aware) parser.
_NOT_IN_VIA: Final = b'\t\r\n"'


def _bad(reason: str) -> ParseError:
    return ParseError(400, reason)


def unfold(value: bytes) -> bytes:
    """Replace every folded line break (CRLF + WSP) by one SP (RFC 3261 §7.3.1).

    Args:
        value: a raw header value, possibly spanning several wire lines.

    Returns:
        The value on one line; unchanged (same object) when it was not folded.
    """
    if LF not in value:
        return value
    parts = value.replace(b"\r\n", b"\n").split(b"\n")
    return b" ".join(p.strip(WS) for p in parts)


def find_unquoted(value: bytes, chars: bytes, start: int = 0) -> int:
    """Index of the first byte of ``chars`` outside quoted strings and ``<...>``, or -1.

    RFC 3261 §7.3.1: commas inside a quoted string or an angle-bracketed URI do not
    separate values.  A backslash escapes the next byte inside quotes (§25.1 quoted-pair).

    Raises:
        ParseError: 400 on an unterminated quoted string (RFC 4475 §3.1.2.6).
    """
    if len(chars) == 1 and DQUOTE not in value:
        # Fast paths: no quoted string, so only <...> can hide a separator.  C-level
        # finds jump from candidate to candidate instead of a loop over every byte.
        i = value.find(chars, start)
        if LAQUOT not in value:
            return i
        while i >= 0:
            # Inside <...> iff the last '<' before i has no '>' after it.
            lt = value.rfind(b"<", start, i)
            if lt < 0 or value.rfind(b">", start, i) > lt:
                return i
            gt = value.find(b">", i)
            if gt < 0:
                return -1
            i = value.find(chars, gt)
        return -1
    n = len(value)
    i = start
    in_angle = False
    while i < n:
        c = value[i]
        if c == 34:  # '"'
            i += 1
            while i < n:
                q = value[i]
                if q == 92:  # backslash: quoted-pair
                    i += 2
                    continue
                if q == 34:
                    break
                i += 1
            else:
                raise _bad("unterminated quoted string")
        elif c == 60:  # '<'
            in_angle = True
        elif c == 62:  # '>'
            in_angle = False
        elif not in_angle and c in chars:
            return i
        i += 1
    return -1


def split_values(value: bytes, sep: bytes = b",") -> list[bytes]:
    """Split a header value at ``sep`` outside quotes and angle brackets, stripping LWS.

    Args:
        value: the raw (possibly folded) value.
        sep: one separator byte, ``b","`` for list headers or ``b";"`` for parameters.

    Returns:
        The pieces, empty ones included (the caller decides whether they are an error).

    Raises:
        ParseError: 400 on an unterminated quoted string.
    """
    if DQUOTE not in value and LAQUOT not in value:
        if value.find(sep) < 0:
            return [value.strip(LWS)]
        return [p.strip(LWS) for p in value.split(sep)]
    out: list[bytes] = []
    pos = 0
    while True:
        i = find_unquoted(value, sep, pos)
        if i < 0:
            out.append(value[pos:].strip(LWS))
            return out
        out.append(value[pos:i].strip(LWS))
        pos = i + 1


def _param_value_ok(value: bytes) -> bool:
    if value[:1] == b'"':
        return len(value) >= 2 and find_unquoted(value, b"\x00", 0) == -1 and (
            value.endswith(b'"')
        )
    # One C call: no LWS or quote inside a token/host value (RFC 3261 §25.1 gen-value).
    return len(value.translate(None, _NOT_IN_VALUE)) == len(value)


def parse_params(text: bytes) -> tuple[Param, ...]:
    """Parse ``;name=value;flag`` parameters (``text`` holds what follows the first ';').

    Args:
        text: parameters without the leading ``;``.

    Returns:
        Tuple of ``(lowercase name, value or None)``.

    Raises:
        ParseError: 400 for an empty parameter (RFC 4475 §3.1.2.1 ``;;``), a non-token name
            or an empty/ill-formed value.
    """
    params: list[Param] = []
    if len(text.translate(None, _NOT_IN_PARAMS)) == len(text):
        # Fast path (the usual ``;rport;branch=z9hG4bK..;tag=..``): no LWS, no quoted
        # string and no '<', so a plain split is exact and every value a valid gen-value.
        for piece in text.split(b";"):
            key, sep, raw = piece.partition(b"=")
            if sep and not raw:
                raise _bad("empty or malformed parameter value")
            if not key or key.translate(None, TOKEN_CHARS):
                raise _bad("empty or malformed parameter name")
            params.append((key.lower(), raw if sep else None))
        return tuple(params)
    for piece in split_values(text, b";"):
        eq = piece.find(b"=")
        if eq < 0:
            name, val = piece, None
        else:
            name, val = piece[:eq].rstrip(LWS), piece[eq + 1 :].lstrip(LWS)
            if not val or not _param_value_ok(val):
                raise _bad("empty or malformed parameter value")
        if not is_token(name):
            raise _bad("empty or malformed parameter name")
        params.append((name.lower(), val))
    return tuple(params)


def _param(params: tuple[Param, ...], name: bytes) -> bytes | None:
    for key, value in params:
        if key == name:
            return b"" if value is None else value
    return None


def split_host_port(hostport: bytes) -> tuple[bytes, int | None]:
    """Split ``host[:port]`` where host is a name, IPv4 or ``[IPv6]`` (RFC 3261 §25.1).

    Args:
        hostport: e.g. ``b"[2001:db8::10]:5070"``.

    Returns:
        ``(host, port)``; an IPv6 host keeps its brackets; port None when absent.

    Raises:
        ParseError: 400 for an empty or malformed host (an unbracketed IPv6 address is
            malformed: RFC 5118 §4.2) or a port outside 0..65535.
    """
    if hostport[:1] == b"[":
        end = hostport.find(b"]")
        if end < 0:
            raise _bad("unterminated IPv6 reference")
        host = hostport[: end + 1]
        inner = host[1:-1]
        # RFC 5118 §4.10: the RFC 3261 ABNF admits ':::'; tolerate it (robustness).
        if inner.count(b":") < 2 or inner.translate(None, _IPV6_CHARS):
            raise _bad("malformed IPv6 reference")
        rest = hostport[end + 1 :].strip(WS)
        if not rest:
            return host, None
        if rest[:1] != b":":
            raise _bad("junk after IPv6 reference")
        port_text = rest[1:].strip(WS)
    else:
        colon = hostport.find(b":")
        if colon < 0:
            host, port_text = hostport, None
        else:
            host, port_text = hostport[:colon].rstrip(WS), hostport[colon + 1 :].lstrip(WS)
        if not host or host.translate(None, _HOST_CHARS):
            raise _bad("malformed host")
        if port_text is None:
            return host, None
    if not port_text or port_text.translate(None, DIGITS) or len(port_text) > 5:
        raise _bad("malformed port")
    port = int(port_text)
    if port > 65535:
        raise _bad("port out of range")
    return host, port


class Via:
    """One Via value (RFC 3261 §20.42): ``SIP/2.0/<transport> <host>[:<port>];params``.

    Attributes:
        transport: transport token as received, e.g. ``b"UDP"``.
        host: sent-by host (IPv6 keeps its brackets).
        port: sent-by port or None.
        params: ``(lowercase name, value | None)`` in wire order.
    """

    # A plain class, not a frozen dataclass: mypyc compiles its ``__init__``, ``__eq__``
    # and ``__hash__`` natively (a dataclass's generated methods stay interpreted).
    # Same semantics: Final (read-only) fields, value equality and hash, the repr.
    __slots__ = ("host", "params", "port", "transport")

    transport: Final[bytes]
    host: Final[bytes]
    port: Final[int | None]
    params: Final[tuple[Param, ...]]

    def __init__(
        self,
        transport: bytes,
        host: bytes,
        port: int | None,
        params: tuple[Param, ...],
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Via):
            return NotImplemented
        return (self.transport == other.transport and self.host == other.host
                and self.port == other.port and self.params == other.params)

    def __hash__(self) -> int:
        return hash((self.transport, self.host, self.port, self.params))

    def __repr__(self) -> str:
        return (f"{type(self).__qualname__}(transport={self.transport!r}, host={self.host!r}, "
                f"port={self.port!r}, params={self.params!r})")

    def param(self, name: bytes) -> bytes | None:
        """Value of parameter ``name`` (lowercase); ``b""`` for a bare flag, None if absent."""
        return _param(self.params, name)

    @property
    def branch(self) -> bytes | None:
        """The ``branch`` parameter (RFC 3261 §8.1.1.7), None if absent."""
        return _param(self.params, b"branch")

    @property
    def received(self) -> bytes | None:
        """The ``received`` parameter (RFC 3261 §18.2.1), None if absent."""
        return _param(self.params, b"received")

    @property
    def rport(self) -> bytes | None:
        """The ``rport`` parameter (RFC 3581): None absent, ``b""`` bare, else the port."""
        return _param(self.params, b"rport")

    @property
    def sent_by(self) -> bytes:
        """``host[:port]`` as it appears in the Via."""
        return self.host if self.port is None else b"%s:%d" % (self.host, self.port)


def parse_via(value: bytes) -> Via:
    """Parse one Via value (not a comma list).

    LWS is allowed around ``/``, ``;``, ``=`` and may be folded (RFC 4475 §3.1.1.1).

    Args:
        value: e.g. ``b"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776;rport"``.

    Returns:
        The parsed :class:`Via`.

    Raises:
        ParseError: 400 when the value is malformed (RFC 4475 §3.1.2.1).
    """
    if value[:8] == b"SIP/2.0/" and len(value.translate(None, _NOT_IN_VIA)) == len(value):
        # Fast path, the shape every stack sends: ``SIP/2.0/UDP host:port;params`` with
        # single spaces, no tabs, folding or quoted strings (RFC 3261 §20.42).
        sp = value.find(b" ", 8)
        transport = value[8:sp]
        if sp > 8 and not transport.translate(None, TOKEN_CHARS):
            semi = value.find(b";", sp)
            sent_by = value[sp + 1 :] if semi < 0 else value[sp + 1 : semi]
            if sent_by and SP not in sent_by:
                host, port = split_host_port(sent_by)
                return Via(transport, host, port,
                           () if semi < 0 else parse_params(value[semi + 1 :]))
    text = unfold(value).strip(LWS)
    parts = text.split(b"/", 2)
    if len(parts) != 3:
        raise _bad("Via: bad sent-protocol")
    if parts[0].strip(WS).upper() != b"SIP" or parts[1].strip(WS) != b"2.0":
        raise _bad("Via: not SIP/2.0")
    rest = parts[2].lstrip(WS)
    sp = len(rest)
    for ws in (b" ", b"\t"):
        i = rest.find(ws)
        if 0 <= i < sp:
            sp = i
    transport = rest[:sp]
    if not is_token(transport):
        raise _bad("Via: bad transport")
    rest = rest[sp:].lstrip(WS)
    semi = find_unquoted(rest, b";")
    params: tuple[Param, ...] = ()
    if semi < 0:
        sent_by = rest.rstrip(WS)
    else:
        sent_by, params = rest[:semi].rstrip(WS), parse_params(rest[semi + 1 :])
    if not sent_by or SP in sent_by or HTAB in sent_by:
        raise _bad("Via: bad sent-by")
    host, port = split_host_port(sent_by)
    return Via(transport, host, port, params)


class CSeq:
    """CSeq value (RFC 3261 §20.16): sequence number and method."""

    # A plain class, not a frozen dataclass: mypyc compiles its ``__init__``, ``__eq__``
    # and ``__hash__`` natively (a dataclass's generated methods stay interpreted).
    # Same semantics: Final (read-only) fields, value equality and hash, the repr.
    __slots__ = ("method", "number")

    number: Final[int]
    method: Final[bytes]

    def __init__(self, number: int, method: bytes) -> None:
        self.number = number
        self.method = method

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CSeq):
            return NotImplemented
        return self.number == other.number and self.method == other.method

    def __hash__(self) -> int:
        return hash((self.number, self.method))

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(number={self.number!r}, method={self.method!r})"


def parse_cseq(value: bytes) -> CSeq:
    """Parse ``<digits> LWS <method>``; leading zeros allowed (RFC 4475 §3.1.1.1).

    Raises:
        ParseError: 400 if malformed or the number exceeds 2**32-1 (RFC 3261 §8.1.1.5,
            RFC 4475 §3.1.2.4).
    """
    parts = unfold(value).split()
    if len(parts) != 2:
        raise _bad("CSeq: malformed")
    number, method = parts
    if not number or number.translate(None, DIGITS):
        raise _bad("CSeq: number not digits")
    # Strip leading zeros before the length check so 0009 stays legal.
    digits = number.lstrip(b"0")
    # int(digits), not int(number): a run of zeros over 4300 digits would make CPython's
    # int() raise ValueError (int_max_str_digits), and only ParseError may leave here.
    if len(digits) > 10 or int(digits or b"0") > MAX_CSEQ:
        raise _bad("CSeq: number above 2**32-1")
    if not is_token(method):
        raise _bad("CSeq: bad method")
    return CSeq(int(digits or b"0"), method)


def parse_retry_after(value: bytes | None) -> float | None:
    """Seconds from a Retry-After value (RFC 3261 §20.33), comment and parameters ignored.

    Args:
        value: the header value, or None when the header is absent.

    Returns:
        The delta-seconds, or None when absent, empty, not digits or over nine digits
        (the sender's advice is then ignored rather than refused).
    """
    if not value:
        return None
    digits = value.split(b";", 1)[0].split(b"(", 1)[0].strip()
    if not digits.isdigit() or len(digits) > 9:
        return None
    return float(int(digits))


class NameAddr:
    """``[display] <uri>;params`` or ``uri;params`` (RFC 3261 §20.10, §25.1).

    Attributes:
        display: display name as received (quotes kept) or None.
        uri: the URI bytes without brackets.
        params: header parameters (after the URI), e.g. ``tag``.
    """

    # A plain class, not a frozen dataclass: mypyc compiles its ``__init__``, ``__eq__``
    # and ``__hash__`` natively (a dataclass's generated methods stay interpreted).
    # Same semantics: Final (read-only) fields, value equality and hash, the repr.
    __slots__ = ("display", "params", "uri")

    display: Final[bytes | None]
    uri: Final[bytes]
    params: Final[tuple[Param, ...]]

    def __init__(self, display: bytes | None, uri: bytes, params: tuple[Param, ...]) -> None:
        self.display = display
        self.uri = uri
        self.params = params

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NameAddr):
            return NotImplemented
        return (self.uri == other.uri and self.display == other.display
                and self.params == other.params)

    def __hash__(self) -> int:
        return hash((self.display, self.uri, self.params))

    def __repr__(self) -> str:
        return (f"{type(self).__qualname__}(display={self.display!r}, uri={self.uri!r}, "
                f"params={self.params!r})")

    @property
    def tag(self) -> bytes | None:
        """The ``tag`` parameter (RFC 3261 §19.3), None if absent."""
        return _param(self.params, b"tag")

    def param(self, name: bytes) -> bytes | None:
        """Value of header parameter ``name`` (lowercase); ``b""`` for a flag."""
        return _param(self.params, name)


def _closing_quote(text: bytes) -> int:
    """Index of the quote closing the quoted string opening at ``text[0]``."""
    i, n = 1, len(text)
    while i < n:
        c = text[i]
        if c == 92:
            i += 2
            continue
        if c == 34:
            return i
        i += 1
    raise _bad("unterminated quoted display name")


def _check_uri_text(uri: bytes) -> None:
    colon = uri.find(b":")
    if colon <= 0 or not uri[:1].isalpha():
        raise _bad("URI without scheme")
    if uri[:colon].translate(None, _SCHEME_CHARS):
        raise _bad("URI scheme malformed")
    if len(uri.translate(None, _NOT_IN_URI)) != len(uri):
        raise _bad("whitespace or delimiter inside URI")


def parse_name_addr(value: bytes) -> NameAddr:
    """Parse a From/To/Contact/Route/Record-Route value.

    Accepts a display name glued to ``<`` (RFC 4475 §3.1.1.6, a known ABNF bug).

    Args:
        value: one value (not a comma list), possibly folded.

    Returns:
        The parsed :class:`NameAddr`.

    Raises:
        ParseError: 400 for an unterminated quote (RFC 4475 §3.1.2.6), an unquoted display
            name with non-token characters (§3.1.2.15), LWS inside ``<>`` (§3.1.2.14), an
            addr-spec holding ``?`` or ``,`` without brackets (RFC 3261 §20.10,
            RFC 4475 §3.1.2.13) or empty parameters.
    """
    if value[:1] == b"<" and len(value.translate(None, _NOT_IN_VALUE)) == len(value):
        # Fast path, ``<uri>;params`` without LWS or quoted strings (RFC 3261 §20.10).
        gt = value.find(b">")
        uri = value[1:gt]
        if gt > 0 and LAQUOT not in uri:
            _check_uri_text(uri)
            rest = value[gt + 1 :]
            if not rest:
                return NameAddr(None, uri, ())
            if rest[:1] == b";":
                return NameAddr(None, uri, parse_params(rest[1:]))
    text = unfold(value).strip(LWS)
    display: bytes | None = None
    if text[:1] == b'"':
        end = _closing_quote(text)
        display = text[: end + 1]
        text = text[end + 1 :].lstrip(WS)
        if text[:1] != b"<":
            raise _bad("display name without <uri>")
    elif LAQUOT in text:
        lt = text.find(b"<")
        words = text[:lt].split()
        if not all(is_token(w) for w in words):
            raise _bad("unquoted display name is not a token list")
        display = b" ".join(words) or None
        text = text[lt:]
    if text[:1] == b"<":
        gt = text.find(b">")
        if gt < 0:
            raise _bad("unterminated <uri>")
        uri = text[1:gt]
        rest = text[gt + 1 :].strip(WS)
    else:
        semi = text.find(b";")
        uri, rest = (text, b"") if semi < 0 else (text[:semi].rstrip(WS), text[semi:])
        # RFC 3261 §20.10: a URI with ',', '?' or ';' must be in angle brackets.
        if QMARK in uri or COMMA in uri:
            raise _bad("addr-spec with ? or , outside <>")
    _check_uri_text(uri)
    if not rest:
        return NameAddr(display, uri, ())
    if rest[:1] != b";":
        raise _bad("junk after URI")
    return NameAddr(display, uri, parse_params(rest[1:]))


def make_branch(*parts: bytes) -> bytes:
    """A Via branch with the RFC 3261 magic cookie, stable for identical inputs.

    RFC 3261 §16.11: a stateless-ish branch derived from the request's identifying fields
    lets retransmissions map to the same branch and loops be detected.

    Args:
        parts: the inputs to hash (e.g. incoming top branch, Call-ID, CSeq, target).

    Returns:
        ``b"z9hG4bK" + 24 hex digits``.
    """
    h = hashlib.blake2b(digest_size=12)
    for part in parts:
        # Length-prefix each part so (b"ab", b"c") and (b"a", b"bc") differ.
        h.update(b"%d:" % len(part))
        h.update(part)
    return MAGIC_COOKIE + h.hexdigest().encode("ascii")
