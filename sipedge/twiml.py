"""TwiML that sends a call from Twilio over the private link, and a linter for ``<Sip>`` URIs.

Theory of operation (issue 12): Twilio reaches a SIP endpoint over Interconnect when the
``<Dial><Sip>`` URI carries ``edge=<interconnect edge>`` (Twilio's "SIP Interface over Twilio
Interconnect"; ``tnx=<connection SID>`` is the deprecated form). :func:`dial_sip` builds that
TwiML from a user, a host and an edge checked against the catalogue, so a public edge
(``ashburn``) or a media-only one (``gll-ix``) cannot slip in; :func:`lint_sip_uri` reads an
existing URI with the proxy's own parser (:func:`sipedge.sip.uri.parse_uri`) and says what is
wrong with it and what to write instead. Both are pure: text in, values out, nothing printed.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Literal

from sipedge.catalogue import Catalogue, CatalogueError
from sipedge.catalogue import load as load_catalogue
from sipedge.sip.errors import ParseError
from sipedge.sip.uri import Uri, parse_uri

__all__ = ["Finding", "Lint", "Twiml", "TwimlError", "dial_sip", "escape_user", "lint_sip_uri"]

XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
# RFC 3261 §25.1: user = 1*( unreserved / escaped / user-unreserved ); anything else in a
# user name is percent-encoded (UTF-8 first), '%' included, so a plain name round-trips.
_USER_SAFE = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    "-_.!~*'()"  # mark
    "&=+$,;?/"  # user-unreserved
)
#: URI parameters that choose how Twilio reaches the endpoint.
_EDGE_PARAMS = frozenset({b"edge", b"tnx"})


class TwimlError(Exception):
    """A user, host or edge that cannot make a ``<Sip>`` URI for the private link.

    Attributes:
        reason: one line for the operator.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Twiml:
    """The answer of :func:`dial_sip`.

    Attributes:
        xml: the TwiML document, pretty-printed, ending in a newline.
        uri: the ``<Sip>`` URI (before XML escaping).
        note: set when the edge was a legacy id that was normalised (for stderr).
    """

    xml: str
    uri: str
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing :func:`lint_sip_uri` has to say.

    Attributes:
        severity: ``problem`` (the URI should change; the linter fails) or ``note``.
        text: what and why.
    """

    severity: Literal["problem", "note"]
    text: str


@dataclass(frozen=True, slots=True)
class Lint:
    """The answer of :func:`lint_sip_uri`.

    Attributes:
        uri: the URI as linted (surrounding blanks removed).
        findings: problems and notes, in the order found.
        suggestion: the corrected URI, or None when there is nothing to change or the
            linter cannot tell what the change should be.
    """

    uri: str
    findings: tuple[Finding, ...]
    suggestion: str | None

    @property
    def ok(self) -> bool:
        """True when no finding is a problem."""
        return all(f.severity != "problem" for f in self.findings)


def escape_user(user: str) -> str:
    """``user`` as the user part of a SIP URI (RFC 3261 §25.1), percent-encoded where needed.

    Args:
        user: a plain user name (``alice``, ``+14155550100``, ``a&b``).

    Returns:
        The user part: characters outside unreserved/user-unreserved as ``%XX`` of UTF-8.
    """
    return "".join(c if c in _USER_SAFE else "".join(f"%{b:02X}" for b in c.encode())
                   for c in user)


def _host_part(host: str) -> str:
    """``host[:port]`` for a URI: a bare IPv6 address is bracketed (RFC 3261 §19.1.1)."""
    h = host.strip()
    try:
        if isinstance(ipaddress.ip_address(h), ipaddress.IPv6Address):
            return f"[{h}]"
    except ValueError:
        pass
    return h


def dial_sip(user: str, host: str, edge: str, catalogue: Catalogue | None = None) -> Twiml:
    """``<Response><Dial><Sip>sip:USER@HOST;edge=EDGE</Sip></Dial></Response>``.

    Args:
        user: the user part, plain (escaped here).
        host: the SIP endpoint Twilio calls over the link: a name, an IP (IPv6 may be bare),
            optionally ``:port``.
        edge: an Interconnect edge; a legacy id (``us1-ix``) is normalised, with a note.
        catalogue: the Twilio catalogue; the shipped one by default.

    Returns:
        The TwiML and the URI in it.

    Raises:
        TwimlError: the edge is not an Interconnect SIP edge (public, media-only, unknown),
            the user is empty, or host is not a host[:port] alone.
    """
    cat = catalogue if catalogue is not None else load_catalogue()
    try:
        match = cat.edge(edge)
    except CatalogueError as exc:
        raise TwimlError(exc.reason) from exc
    if not user:
        raise TwimlError("the user part must not be empty")
    hostport = _host_part(host)
    uri = f"sip:{escape_user(user)}@{hostport};edge={match.edge.name}"
    # Parse what we built with the proxy's own parser: a host that smuggles in a parameter,
    # a header or a second '@' shows up as a parse error or as parts that differ.
    try:
        parsed = parse_uri(uri.encode("ascii"))
    except (UnicodeEncodeError, ParseError) as exc:
        reason = exc.reason if isinstance(exc, ParseError) else "non-ASCII (use its IDNA form)"
        raise TwimlError(f"host {host!r} is not a SIP host[:port]: {reason}") from exc
    edge_param = ((b"edge", match.edge.name.encode()),)
    expected = (escape_user(user).encode(), hostport.encode(), edge_param)
    got = (parsed.user, parsed.raw[parsed.host_start : parsed.hostport_end], parsed.params)
    if got != expected or parsed.headers:
        raise TwimlError(f"host {host!r} is not a SIP host[:port] alone")

    response = ET.Element("Response")
    ET.SubElement(ET.SubElement(response, "Dial"), "Sip").text = uri
    ET.indent(response, space="  ")
    # ElementTree escapes '&', '<' and '>' in text; the declaration is written by hand
    # because ElementTree's uses single quotes and lower-case utf-8.
    body = ET.tostring(response, encoding="unicode")
    return Twiml(f"{XML_DECLARATION}\n{body}\n", uri, match.warning)


def _with_edge(uri: Uri, edge: str) -> str:
    """``uri`` with its first ``edge``/``tnx`` parameter replaced by ``edge=EDGE`` in place
    (appended when there is none), the other ``edge``/``tnx`` parameters removed; every other
    byte kept, as :meth:`Uri.without_params` does."""
    section = uri.raw[uri.params_start : uri.params_end]
    kept: list[bytes] = []
    placed = False
    for piece in section[1:].split(b";") if section else []:
        if piece.split(b"=", 1)[0].lower() in _EDGE_PARAMS:
            if not placed:
                kept.append(b"edge=" + edge.encode())
                placed = True
            continue
        kept.append(piece)
    if not placed:
        kept.append(b"edge=" + edge.encode())
    params = b"".join(b";" + p for p in kept)
    return (uri.raw[: uri.params_start] + params + uri.raw[uri.params_end :]).decode()


def _public_twin(cat: Catalogue, name: str) -> str | None:
    """The Interconnect edge of the city whose *public* edge is ``name`` (``ashburn``)."""
    key = name.strip().lower()
    return next((e.name for e in cat.edges if key in e.public_names), None)


def lint_sip_uri(text: str, catalogue: Catalogue | None = None,
                 edge: str | None = None) -> Lint:
    """Check a ``<Dial><Sip>`` URI for the private link.

    Problems: not a SIP URI; ``tnx=`` (deprecated: Twilio documents ``edge=``); an ``edge=``
    that is not an Interconnect SIP edge (public, media-only or unknown); no ``edge=`` at all
    (the call would not use the private link); ``edge`` given twice. A legacy edge id
    (``us1-ix``) is a note: it still works, the current name is suggested.

    Args:
        text: the URI (surrounding blanks, as in an indented ``<Sip>``, are ignored).
        catalogue: the Twilio catalogue; the shipped one by default.
        edge: the edge to suggest when the URI's own ``tnx`` value cannot be mapped (a
            connection SID) or it has no edge; must be an Interconnect edge.

    Returns:
        The findings and, when the linter can tell, the corrected URI.

    Raises:
        TwimlError: ``edge`` itself is not an Interconnect edge.
    """
    cat = catalogue if catalogue is not None else load_catalogue()
    fallback: str | None = None
    if edge is not None:
        try:
            fallback = cat.edge(edge).edge.name
        except CatalogueError as exc:
            raise TwimlError(exc.reason) from exc
    uri_text = text.strip()
    findings: list[Finding] = []

    def problem(msg: str) -> None:
        findings.append(Finding("problem", msg))

    try:
        uri = parse_uri(uri_text.encode("utf-8"))
    except ParseError as exc:
        problem(f"not a SIP URI: {exc.reason}")
        return Lint(uri_text, tuple(findings), None)
    if not uri.is_sip:
        problem(f"<Dial><Sip> needs a sip: or sips: URI, not a {uri.scheme.decode()!r} URI")
        return Lint(uri_text, tuple(findings), None)

    edges = [v for k, v in uri.params if k == b"edge"]
    tnxs = [v for k, v in uri.params if k == b"tnx"]
    names = ", ".join(cat.edge_names)
    target: str | None = None  # the edge the corrected URI should carry
    if len(edges) > 1 or len(tnxs) > 1:
        problem("edge/tnx given more than once: Twilio may read either; keep one edge=")
    for value in edges:
        given = (value or b"").decode("utf-8", "replace")
        try:
            match = cat.edge(given)
        except CatalogueError as exc:
            problem(f"edge={given} is not an Interconnect SIP edge: {exc.reason}")
            target = target or _public_twin(cat, given)
            continue
        if match.is_legacy:
            findings.append(Finding(
                "note", f"edge={given} is the legacy id of {match.edge.name} "
                f"({match.edge.region}); Twilio documents {match.edge.name} as current"))
        target = target or match.edge.name
    for value in tnxs:
        given = (value or b"").decode("utf-8", "replace")
        try:
            mapped = cat.edge(given).edge.name
        except CatalogueError:
            # Twilio's form is tnx=<connection SID>: which edge that connection is on is
            # account data the catalogue does not have.
            hint = (f"using {fallback} (--edge)" if fallback
                    else f"say which with --edge (one of {names})")
            problem(f"tnx is deprecated; use edge= instead. tnx={given} is not an edge id "
                    f"(a connection SID?): write the edge of that connection, {hint}")
            continue
        problem(f"tnx is deprecated; use edge= instead: tnx={given} is edge={mapped}")
        if target is not None and target != mapped:
            problem(f"tnx={given} ({mapped}) and edge= ({target}) disagree; edge= is kept")
        target = target or mapped
    if not edges and not tnxs:
        problem("no edge= parameter: Twilio would not send this call over the private link"
                + ("" if fallback else f"; add edge=<one of {names}> (or pass --edge)"))
    target = target or fallback

    if target is None or not findings:
        return Lint(uri_text, tuple(findings), None)
    return Lint(uri_text, tuple(findings), _with_edge(uri, target))
