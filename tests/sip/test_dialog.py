"""UAC dialog state from an INVITE and its 2xx (RFC 3261 §12.1.2, §12.2.1.1)."""

from __future__ import annotations

import pytest

from sipedge.sip.dialog import uac_dialog
from sipedge.sip.errors import ParseError
from sipedge.sip.message import Request, Response, parse

# Hand-written (not built by sipedge.sip.message: the input must not come from the code
# under test).
INVITE = (
    b"INVITE sip:+14155550100@127.0.0.1:5080 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-1;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:pbx@127.0.0.1:40000>;tag=abc\r\n"
    b"To: <sip:+14155550100@127.0.0.1:40000>\r\n"
    b"Call-ID: c1@127.0.0.1\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n")
OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-1;rport=40000\r\n"
    b"Record-Route: <sip:127.0.0.3:5060;lr>\r\n"
    b"Record-Route: <sip:127.0.0.1:5080;lr>\r\n"
    b"From: <sip:pbx@127.0.0.1:40000>;tag=abc\r\n"
    b"To: <sip:+14155550100@127.0.0.1:40000>;tag=xyz\r\n"
    b"Call-ID: c1@127.0.0.1\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"Contact: <sip:twilio@127.0.0.64:5060>\r\n"
    b"Content-Length: 0\r\n\r\n")


def _pair(ok: bytes = OK) -> tuple[Request, Response]:
    invite, resp = parse(INVITE), parse(ok)
    assert isinstance(invite, Request) and isinstance(resp, Response)
    return invite, resp


def test_uac_dialog_reverses_record_route_and_targets_contact() -> None:
    dialog = uac_dialog(*_pair())
    assert dialog.route_set == (b"<sip:127.0.0.1:5080;lr>", b"<sip:127.0.0.3:5060;lr>")
    assert dialog.remote_target == b"sip:twilio@127.0.0.64:5060"
    assert dialog.next_hop() == b"sip:127.0.0.1:5080;lr"  # loose routing: the first Route
    assert dialog.remote.endswith(b";tag=xyz") and dialog.local.endswith(b";tag=abc")


def test_dialog_ack_keeps_the_invite_cseq_and_bye_goes_above() -> None:
    dialog = uac_dialog(*_pair())
    ack = parse(dialog.request(b"ACK", via=b"SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-2"))
    bye = parse(dialog.request(b"BYE", via=b"SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-3"))
    assert isinstance(ack, Request) and isinstance(bye, Request)
    assert ack.request_uri == bye.request_uri == b"sip:twilio@127.0.0.64:5060"
    assert (ack.cseq.number, ack.cseq.method) == (7, b"ACK")
    assert (bye.cseq.number, bye.cseq.method) == (8, b"BYE")
    assert bye.header_values(b"route") == [b"<sip:127.0.0.1:5080;lr>",
                                           b"<sip:127.0.0.3:5060;lr>"]
    assert bye.to_tag == b"xyz" and bye.from_tag == b"abc" and bye.call_id == b"c1@127.0.0.1"


def test_dialog_without_record_route_goes_to_the_contact() -> None:
    ok = b"".join(line + b"\r\n" for line in OK.split(b"\r\n")[:-2]
                  if not line.startswith(b"Record-Route")) + b"\r\n"
    dialog = uac_dialog(*_pair(ok))
    assert dialog.route_set == ()
    assert dialog.next_hop() == b"sip:twilio@127.0.0.64:5060"


def test_2xx_without_contact_is_refused() -> None:
    ok = OK.replace(b"Contact: <sip:twilio@127.0.0.64:5060>\r\n", b"")
    with pytest.raises(ParseError):
        uac_dialog(*_pair(ok))
