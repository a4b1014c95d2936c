"""SDP media check (issue 12): Twilio's media must be in its Interconnect range.

Pure function first, then through the core: INVITEs from gateways and their 18x/2xx
answers are read, never rewritten; other traffic is not looked at.
"""

from __future__ import annotations

import ipaddress

import pytest

from sipedge.catalogue import load
from sipedge.proxy.events import MediaOutsideRange
from sipedge.proxy.media import MediaIssue, MediaProblem, MediaRange, check_sdp
from tests.helpers.wire import (
    CALLEE,
    PBX,
    VIRGINIA,
    ProxyHarness,
    calls,
    make_request,
    make_response,
)
from tests.proxy.test_core import invite, place

TWILIO = MediaRange(ipaddress.IPv4Network("168.86.128.0/18"), 10000, 60000)


def sdp(c: bytes = b"IN IP4 168.86.130.7", port: bytes = b"18000", extra: bytes = b"") -> bytes:
    return (b"v=0\r\no=- 1 1 IN IP4 168.86.130.7\r\ns=-\r\nc=" + c + b"\r\nt=0 0\r\n"
            b"m=audio " + port + b" RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n" + extra)


def test_catalogue_range_is_what_the_check_uses() -> None:
    catalogue = load()
    assert str(catalogue.media_network) == "168.86.128.0/18"
    assert catalogue.media_ports == (10000, 60000)


@pytest.mark.parametrize(("body", "expected"), [
    (sdp(), None),
    (sdp(port=b"0"), None),  # a disabled stream (RFC 3264 §6)
    (sdp(c=b"IN IP4 168.86.191.255/127"), None),  # multicast TTL suffix, still inside
    (sdp(c=b"IN IP4 54.172.60.1"), MediaProblem(MediaIssue.ADDRESS, "54.172.60.1")),
    (sdp(c=b"IN IP6 2001:db8::1"), MediaProblem(MediaIssue.ADDRESS, "2001:db8::1")),
    (sdp(c=b"IN IP4 media.example"), MediaProblem(MediaIssue.ADDRESS, "media.example")),
    (sdp(port=b"9999"), MediaProblem(MediaIssue.PORT, "9999")),
    (sdp(port=b"60001/2"), MediaProblem(MediaIssue.PORT, "60001")),
    (sdp(extra=b"m=video 70000 RTP/AVP 96\r\n"), MediaProblem(MediaIssue.PORT, "70000")),
    (sdp().replace(b"\r\n", b"\n"), None),  # bare LF line ends tolerated
    (b"not sdp at all", None),
])
def test_check_sdp(body: bytes, expected: MediaProblem | None) -> None:
    assert check_sdp(body, TWILIO) == expected


def test_inbound_invite_with_public_media_is_counted_and_forwarded_unchanged() -> None:
    h = ProxyHarness()
    h.bring_up()
    body = sdp(c=b"IN IP4 54.172.60.1")
    data = make_request(b"INVITE", b"sip:+14155550100@127.0.0.3:5060;edge=ashburn-ix",
                        via=[b"SIP/2.0/UDP 127.0.0.64:5060;branch=z9hG4bK-gw-m1"],
                        call_id=b"media-1@twilio",
                        headers=[(b"Content-Type", b"application/sdp")], body=body)
    fwd = calls(h.feed(data, VIRGINIA[0]))
    assert [s.dest for s in fwd] == [CALLEE]
    assert fwd[0].data.endswith(body)  # read, never rewritten
    assert h.core.stats.media_outside_range == {MediaIssue.ADDRESS: 1}
    assert [e for e in h.events if isinstance(e, MediaOutsideRange)] == [
        MediaOutsideRange("media-1@twilio", VIRGINIA[0], MediaIssue.ADDRESS, "54.172.60.1")]


def test_gateway_answer_checked_pbx_offer_not() -> None:
    h = ProxyHarness()
    h.bring_up()
    _, fwd = place(h)  # the PBX's own SDP (127.0.0.1) is not Twilio's: not checked
    assert h.core.stats.sdp_checked == 0
    h.feed(make_response(fwd, 183, b"Session Progress", body=sdp(port=b"5004"),
                         headers_=[(b"Content-Type", b"application/sdp")]), VIRGINIA[0])
    h.feed(make_response(fwd, 200, b"OK", body=sdp(),
                         headers_=[(b"Content-Type", b"application/sdp")]), VIRGINIA[0])
    assert h.core.stats.sdp_checked == 2
    assert h.core.stats.media_outside_range == {MediaIssue.PORT: 1}


def test_check_off_reads_nothing() -> None:
    h = ProxyHarness(settings_overrides={"media": None})
    h.bring_up()
    _, fwd = place(h)
    h.feed(make_response(fwd, 200, b"OK", body=sdp(port=b"5004"),
                         headers_=[(b"Content-Type", b"application/sdp")]), VIRGINIA[0])
    assert h.core.stats.sdp_checked == 0 and h.core.stats.media_outside_range == {}
    assert calls(h.feed(invite(2), PBX))  # and calls still flow
