"""The UAC side of a dialog (RFC 3261 §12.1.2, §12.2.1): ACK for a 2xx, BYE.

Theory of operation: a proxy never needs this (it stays out of dialogs, routing in-dialog
requests by Route/Request-URI alone), but the user agents that *test* a proxy do: the
simulated PBX and gateways of ``sipedge demo`` and the test call of ``sipedge verify``.
:func:`uac_dialog` reads what the 2xx and the INVITE as sent fix for the rest of the call
(Call-ID, both tags, the remote target, the route set) and :meth:`Dialog.request` builds
an in-dialog request from it with :func:`sipedge.sip.message.build_request`. Pure: bytes
in, bytes out, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sipedge.sip.errors import ParseError
from sipedge.sip.headers import parse_name_addr
from sipedge.sip.message import Request, Response, build_request

__all__ = ["Dialog", "uac_dialog"]


@dataclass(frozen=True, slots=True)
class Dialog:
    """What a UAC knows of a confirmed dialog.

    Attributes:
        call_id: the Call-ID.
        local: our From value as sent (with our tag).
        remote: the To value of the 2xx (with the callee's tag).
        remote_target: the URI of the 2xx's Contact (the Request-URI of later requests).
        route_set: the 2xx's Record-Route values in reverse order (§12.1.2).
        cseq: the INVITE's CSeq number (the ACK reuses it; later requests go above).
    """

    call_id: bytes
    local: bytes
    remote: bytes
    remote_target: bytes
    route_set: tuple[bytes, ...]
    cseq: int

    def next_hop(self) -> bytes:
        """The URI the next request is sent to: the first Route, else the remote target.

        Every Record-Route sipedge writes carries ``;lr`` (RFC 3261 §16.6 step 4), so the
        loose-routing rule of §12.2.1.1 applies: Request-URI = remote target, packet to
        the first Route.
        """
        if self.route_set:
            return parse_name_addr(self.route_set[0]).uri
        return self.remote_target

    def request(self, method: bytes, *, via: bytes, cseq: int | None = None,
                headers: Sequence[tuple[bytes, bytes]] = (), body: bytes = b"") -> bytes:
        """An in-dialog request (RFC 3261 §12.2.1.1).

        Args:
            method: ``b"ACK"`` (CSeq number of the INVITE, §13.2.2.4) or ``b"BYE"``…
            via: our Via value with a new branch (an ACK for a 2xx is its own transaction).
            cseq: the CSeq number; default: the INVITE's for ACK, one above for others.
            headers: extra header lines after the Route set.
            body: the body.

        Returns:
            The request bytes.
        """
        if cseq is None:
            cseq = self.cseq if method == b"ACK" else self.cseq + 1
        routes = tuple((b"Route", value) for value in self.route_set)
        return build_request(method, self.remote_target, via=via, from_=self.local,
                             to=self.remote, call_id=self.call_id, cseq=cseq,
                             headers=routes + tuple(headers), body=body)


def uac_dialog(invite: Request, ok: Response) -> Dialog:
    """The dialog a 2xx to our INVITE creates (RFC 3261 §12.1.2).

    Args:
        invite: the INVITE as we sent it (parsed).
        ok: the 2xx response.

    Returns:
        The dialog.

    Raises:
        ParseError: the 2xx has no Contact (§12.1.1 makes it mandatory) or a malformed
            Contact/Record-Route.
    """
    contact = ok.header(b"contact")
    if contact is None:
        raise ParseError(None, "2xx without Contact")
    target = parse_name_addr(contact).uri
    # §12.1.2: the route set is the Record-Route list in reverse order for the UAC.
    route_set = tuple(reversed(ok.header_values(b"record-route")))
    for value in route_set:
        parse_name_addr(value)  # refuse a malformed one now, not at the BYE
    from_ = invite.header(b"from")
    to = ok.header(b"to")
    assert from_ is not None and to is not None  # mandatory: checked when parsed
    return Dialog(call_id=invite.call_id, local=from_, remote=to, remote_target=target,
                  route_set=route_set, cseq=invite.cseq.number)
