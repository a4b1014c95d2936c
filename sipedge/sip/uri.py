"""SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966), parsed on demand.

A :class:`Uri` keeps the bytes it was parsed from (``raw``) plus the offsets of its parts,
so formatting is exact (``bytes(uri) == raw``) and rewrites such as :meth:`Uri.with_host`
splice bytes instead of re-serialising.  Comparison follows RFC 3261 §19.1.4
(:func:`uri_equal`).  Unknown schemes are kept opaque (RFC 4475 §3.3.2-3: a proxy answers
416 for them, which is a decision for :mod:`sipedge.proxy.validation`).
"""

from __future__ import annotations

from typing import Final

from sipedge.sip.errors import ParseError
from sipedge.sip.grammar import is_token
from sipedge.sip.headers import Param, split_host_port

__all__ = ["Uri", "parse_uri", "unescape", "uri_equal"]

_SCHEME_CHARS: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-."
_HEX: Final = b"0123456789abcdefABCDEF"
#: Bytes never legal unescaped in a URI on the wire (controls, SP, DEL, delimiters).
_FORBIDDEN: Final = bytes(range(0, 0x21)) + b'\x7f<>"'
#: RFC 3261 §19.1.4: these parameters must match when present in either URI.
_MUST_MATCH: Final = (b"user", b"ttl", b"method", b"maddr", b"transport")


def _bad(reason: str) -> ParseError:
    return ParseError(400, reason)


def unescape(value: bytes) -> bytes:
    """Decode ``%HEX HEX`` escapes once (RFC 3261 §19.1.4; no recursive unescaping).

    A ``%`` not followed by two hex digits is kept literally (RFC 4475 §3.1.1.3).
    """
    if b"%" not in value:
        return value
    out = bytearray()
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == 37 and i + 2 < n + 0 and value[i + 1] in _HEX and value[i + 2] in _HEX:
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
            continue
        out.append(c)
        i += 1
    return bytes(out)


class Uri:
    """A parsed URI that remembers its bytes.

    Attributes:
        raw: the URI exactly as parsed.
        scheme: lowercase scheme (``b"sip"``, ``b"sips"``, ``b"tel"``, other = opaque).
        user: user part (escapes kept) or None; for tel the number.
        password: password or None.
        host: host (IPv6 with brackets), ``b""`` for tel/opaque URIs.
        port: port or None.
        params: URI parameters ``(lowercase name, value | None)``.
        headers: URI headers ``(name, value)`` after ``?``.
        host_start: offset of the host in ``raw``.
        hostport_end: offset just past host[:port] in ``raw``.
        params_start: offset of the first ``;`` of the parameters (or of the headers / end).
        params_end: offset where the parameters end (``?`` or end).
    """

    # A plain class, not a frozen dataclass: mypyc compiles its ``__init__``, ``__eq__``
    # and ``__hash__`` natively (a dataclass's generated methods stay interpreted).
    # Same semantics: Final (read-only) fields, value equality and hash, the repr.
    __slots__ = ("headers", "host", "host_start", "hostport_end", "params", "params_end",
                 "params_start", "password", "port", "raw", "scheme", "user")

    raw: Final[bytes]
    scheme: Final[bytes]
    user: Final[bytes | None]
    password: Final[bytes | None]
    host: Final[bytes]
    port: Final[int | None]
    params: Final[tuple[Param, ...]]
    headers: Final[tuple[tuple[bytes, bytes], ...]]
    host_start: Final[int]
    hostport_end: Final[int]
    params_start: Final[int]
    params_end: Final[int]

    def __init__(
        self,
        raw: bytes,
        scheme: bytes,
        user: bytes | None,
        password: bytes | None,
        host: bytes,
        port: int | None,
        params: tuple[Param, ...],
        headers: tuple[tuple[bytes, bytes], ...],
        host_start: int,
        hostport_end: int,
        params_start: int,
        params_end: int,
    ) -> None:
        self.raw = raw
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = params
        self.headers = headers
        self.host_start = host_start
        self.hostport_end = hostport_end
        self.params_start = params_start
        self.params_end = params_end

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Uri):
            return NotImplemented
        return (self.raw == other.raw and self.scheme == other.scheme
                and self.user == other.user and self.password == other.password
                and self.host == other.host and self.port == other.port
                and self.params == other.params and self.headers == other.headers
                and self.host_start == other.host_start
                and self.hostport_end == other.hostport_end
                and self.params_start == other.params_start
                and self.params_end == other.params_end)

    def __hash__(self) -> int:
        return hash((self.raw, self.scheme, self.user, self.password, self.host, self.port,
                     self.params, self.headers, self.host_start, self.hostport_end,
                     self.params_start, self.params_end))

    def __repr__(self) -> str:
        return (f"{type(self).__qualname__}(raw={self.raw!r}, scheme={self.scheme!r}, "
                f"user={self.user!r}, password={self.password!r}, host={self.host!r}, "
                f"port={self.port!r}, params={self.params!r}, headers={self.headers!r}, "
                f"host_start={self.host_start!r}, hostport_end={self.hostport_end!r}, "
                f"params_start={self.params_start!r}, params_end={self.params_end!r})")

    def __bytes__(self) -> bytes:
        return self.raw

    @property
    def is_sip(self) -> bool:
        """True for ``sip:`` and ``sips:`` URIs."""
        return self.scheme in (b"sip", b"sips")

    def param(self, name: bytes) -> bytes | None:
        """Value of URI parameter ``name`` (lowercase); ``b""`` for a flag, None if absent."""
        for key, value in self.params:
            if key == name:
                return b"" if value is None else value
        return None

    def has_param(self, name: bytes) -> bool:
        """True if parameter ``name`` (lowercase) is present, e.g. ``lr`` (§19.1.1)."""
        return any(key == name for key, _ in self.params)

    def with_host(self, host: bytes, port: int | None = None) -> bytes:
        """These URI bytes with host[:port] replaced, every other byte kept.

        Args:
            host: new host (bracket IPv6 yourself).
            port: new port, or None for no port.
        """
        hostport = host if port is None else b"%s:%d" % (host, port)
        return self.raw[: self.host_start] + hostport + self.raw[self.hostport_end :]

    def without_params(self, names: tuple[bytes, ...] | frozenset[bytes]) -> bytes:
        """These URI bytes with the named parameters (lowercase) removed."""
        section = self.raw[self.params_start : self.params_end]
        if not section:
            return self.raw
        kept = [
            p
            for p in section[1:].split(b";")
            if p.split(b"=", 1)[0].lower() not in names
        ]
        new = b"".join(b";" + p for p in kept)
        return self.raw[: self.params_start] + new + self.raw[self.params_end :]


def _uri_params(section: bytes) -> tuple[Param, ...]:
    params: list[Param] = []
    for piece in section.split(b";"):
        eq = piece.find(b"=")
        name, value = (piece, None) if eq < 0 else (piece[:eq], piece[eq + 1 :])
        if not is_token(name) or value == b"":
            raise _bad("malformed URI parameter")
        params.append((name.lower(), value))
    return tuple(params)


def parse_uri(raw: bytes) -> Uri:
    """Parse a sip/sips/tel URI (other schemes are returned opaque).

    Args:
        raw: URI bytes without angle brackets.

    Returns:
        A :class:`Uri` whose ``raw`` is ``raw``.

    Raises:
        ParseError: 400 if malformed: no scheme, forbidden bytes (LWS, ``<>"``), bad host or
            port (an unbracketed IPv6 host is bad, RFC 5118 §4.2), empty parameters.
    """
    colon = raw.find(b":")
    if colon <= 0 or not raw[:1].isalpha() or raw[:colon].translate(None, _SCHEME_CHARS):
        raise _bad("URI without a valid scheme")
    if len(raw.translate(None, _FORBIDDEN)) != len(raw):
        raise _bad("forbidden byte in URI")
    scheme = raw[:colon].lower()
    n = len(raw)
    if scheme not in (b"sip", b"sips", b"tel"):
        return Uri(raw, scheme, None, None, b"", None, (), (), n, n, n, n)
    start = colon + 1
    # RFC 3261 §25.1: an unescaped '@' can only end the userinfo (params, headers and the
    # password cannot hold one), while the user part may hold '?', ';' and ':'.
    at = raw.find(b"@", start) if scheme != b"tel" else -1
    host_start = start if at < 0 else at + 1
    q = raw.find(b"?", host_start)
    params_end = n if q < 0 else q
    headers: tuple[tuple[bytes, bytes], ...] = ()
    if q >= 0:
        pairs = []
        for piece in raw[q + 1 :].split(b"&"):
            eq = piece.find(b"=")
            if eq <= 0:
                raise _bad("malformed URI header")
            pairs.append((piece[:eq], piece[eq + 1 :]))
        headers = tuple(pairs)
    if scheme == b"tel":
        # RFC 3966: tel:<number>;params -- the number plays the role of the user.
        semi = raw.find(b";", start, params_end)
        number_end = params_end if semi < 0 else semi
        number = raw[start:number_end]
        if not number:
            raise _bad("empty tel number")
        params = () if semi < 0 else _uri_params(raw[semi + 1 : params_end])
        return Uri(raw, scheme, number, None, b"", None, params, headers,
                   start, start, number_end, params_end)
    # RFC 3261 §19.1.1: sip:user:password@host:port;uri-parameters?headers
    user: bytes | None = None
    password: bytes | None = None
    if at >= 0:
        userinfo = raw[start:at]
        pc = userinfo.find(b":")
        if pc >= 0:
            user, password = userinfo[:pc], userinfo[pc + 1 :]
        else:
            user = userinfo
        if not user:
            raise _bad("empty user in URI")
    if raw[host_start : host_start + 1] == b"[":
        close = raw.find(b"]", host_start, params_end)
        if close < 0:
            raise _bad("unterminated IPv6 reference")
        semi = raw.find(b";", close, params_end)
    else:
        semi = raw.find(b";", host_start, params_end)
    hostport_end = params_end if semi < 0 else semi
    host, port = split_host_port(raw[host_start:hostport_end])
    params = () if semi < 0 else _uri_params(raw[semi + 1 : params_end])
    return Uri(raw, scheme, user, password, host, port, params, headers,
               host_start, hostport_end, hostport_end, params_end)


def uri_equal(a: Uri | bytes, b: Uri | bytes) -> bool:
    """Compare two URIs per RFC 3261 §19.1.4.

    User and password compare case-sensitively after unescaping; scheme, host and parameter
    names case-insensitively; an explicit port never equals an absent one; ``user``,
    ``ttl``, ``method``, ``maddr`` and ``transport`` must match when present in either URI;
    other parameters only when present in both; headers must all match.

    Args:
        a: a URI or its bytes.
        b: a URI or its bytes.

    Returns:
        True if equivalent.  Malformed input compares unequal (never raises).
    """
    try:
        ua = a if isinstance(a, Uri) else parse_uri(a)
        ub = b if isinstance(b, Uri) else parse_uri(b)
    except ParseError:
        return False
    if ua.scheme != ub.scheme:
        return False
    if not ua.is_sip:
        if ua.scheme == b"tel":
            return (unescape(ua.user or b"").lower() == unescape(ub.user or b"").lower()
                    and _params_map(ua) == _params_map(ub))
        return ua.raw.lower() == ub.raw.lower()
    if ua.user is not None and ub.user is not None:
        if unescape(ua.user) != unescape(ub.user):
            return False
    elif ua.user is not ub.user:
        return False
    if unescape(ua.password or b"") != unescape(ub.password or b""):
        return False
    if ua.host.lower() != ub.host.lower() or ua.port != ub.port:
        return False
    pa, pb = _params_map(ua), _params_map(ub)
    for name in _MUST_MATCH:
        if pa.get(name) != pb.get(name):
            return False
    for name in pa.keys() & pb.keys():
        if pa[name] != pb[name]:
            return False
    ha = {(k.lower(), unescape(v)) for k, v in ua.headers}
    hb = {(k.lower(), unescape(v)) for k, v in ub.headers}
    return ha == hb


def _params_map(uri: Uri) -> dict[bytes, bytes | None]:
    return {
        name: None if value is None else unescape(value).lower() for name, value in uri.params
    }
