"""The forwarding steps that are policy, not grammar: Via, Record-Route, R-URI host.

The byte splicing itself is ``sipedge.sip.message.forward_request``; this module only
decides *what* to splice (RFC 3261 §16.6 steps 1-8).
"""

from __future__ import annotations

import hashlib
from typing import Final

from sipedge.sip.address import Endpoint
from sipedge.sip.uri import Uri

__all__ = [
    "BRANCH_PREFIX",
    "branch_for",
    "localize_request_uri",
    "loop_hash",
    "record_route_value",
    "strip_params",
    "via_value",
]

#: RFC 3261 §8.1.1.7 magic cookie, then our mark so we recognise our own branches.
BRANCH_PREFIX: Final = b"z9hG4bK-se"


def loop_hash(request_uri: bytes, call_id: bytes, from_tag: bytes | None,
              to_tag: bytes | None, cseq: int, method: bytes) -> bytes:
    """The part of our branch that detects loops (RFC 3261 §16.6 step 8, RFC 5393).

    It hashes what a looping request keeps unchanged when it comes back to us: the
    Request-URI *as we send it*, Call-ID, tags and CSeq. A spiral (the R-URI changed
    downstream) hashes differently and is not a loop.
    """
    material = b"\x00".join(
        (request_uri, call_id, from_tag or b"", to_tag or b"", b"%d" % cseq, method))
    return hashlib.blake2s(material, digest_size=6).hexdigest().encode("ascii")


def branch_for(loop: bytes, server_key: bytes, attempt: int) -> bytes:
    """Our branch: cookie + loop hash + a part unique per server transaction and attempt.

    Stable for the same inputs, so a retransmitted ACK for 2xx (forwarded statelessly)
    gets the same branch (RFC 3261 §16.11).
    """
    uniq = hashlib.blake2s(server_key, digest_size=6).hexdigest().encode("ascii")
    return b"%s%s.%s%d" % (BRANCH_PREFIX, loop, uniq, attempt)


def via_value(local: Endpoint, branch: bytes) -> bytes:
    """Our Via (RFC 3261 §16.6 step 8): sent-by is the listener the request leaves from."""
    return b"SIP/2.0/%s %s;branch=%s" % (
        local.via_transport, local.hostport.encode("ascii"), branch)


def record_route_value(listener: Endpoint) -> bytes:
    """A Record-Route value naming ``listener`` with ``;lr`` (RFC 3261 §16.6 step 4)."""
    hostport = listener.hostport.encode("ascii")
    if listener.transport == "tls":
        return b"<sips:%s;lr>" % hostport
    if listener.transport == "tcp":
        return b"<sip:%s;transport=tcp;lr>" % hostport
    return b"<sip:%s;lr>" % hostport


def localize_request_uri(uri: Uri, domain_host: bytes) -> bytes:
    """Point the Request-URI at the interconnect domain, keeping user and parameters.

    ``sip:+14155550100@10.0.0.5:5080;user=phone`` →
    ``sip:+14155550100@example.sip.ashburn-ix.twilio.com;user=phone``. The port is dropped:
    the domain is a name, and the gateway address is the next hop, not the URI.

    A ``tel:`` URI has no host to replace; it is mapped to a SIP URI as RFC 3261 §19.1.6
    describes (``tel:+1415;postd=pp22`` → ``sip:+1415;postd=pp22@host;user=phone``).
    """
    if uri.scheme == b"tel":
        return b"sip:%s@%s;user=phone" % (uri.raw[uri.host_start:uri.params_end], domain_host)
    return uri.with_host(domain_host, None)


def strip_params(uri: Uri, names: tuple[bytes, ...]) -> bytes:
    """The URI without the given parameters (``edge``, ``tnx``)."""
    return uri.without_params(names)
