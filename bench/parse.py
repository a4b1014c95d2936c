"""Hot-path benchmark: sipedge.sip.message against the `sipmessage` package, same run.

Measures, on ../shared/corpus/flows/twilio/01-invite-asterisk.sip and the 180/200 responses
to it (synthesised here as they come back through the proxy, i.e. with our Via on top):

* parse-only (the INVITE),
* parse + forward transform + serialise (R-URI rewrite to the Twilio edge host, our Via
  pushed, Record-Route added, Max-Forwards - 1, received/rport on the PBX's Via),
* response Via-strip (parse the 180/200, pop the top Via, serialise),

in messages/s as the median of >= 5 repeats, for both libraries; then, for sipedge alone,
the nanoseconds per ``call_id_of`` on the INVITE (the Call-ID scan a multi-process shell
runs on every datagram of a shared listener to steer it) against ``parse(...).call_id``.
The last line is
``forward_vs_sipmessage=<ratio>x strip_vs_sipmessage=<ratio>x`` for scripts.

Usage: python bench/parse.py [--repeats N] [--seconds S]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sipedge.sip import (  # noqa: E402
    ForwardPlan,
    Request,
    Response,
    build_response,
    call_id_of,
    forward_request,
    parse,
    strip_top_via,
)

CORPUS = Path(os.environ.get("SIPEDGE_CORPUS", ROOT.parent / "shared" / "corpus"))
INVITE_PATH = CORPUS / "flows" / "twilio" / "01-invite-asterisk.sip"

OUR_VIA = b"SIP/2.0/UDP 192.0.2.254:5060;branch=z9hG4bKsipedge0a1b2c3d"
RECORD_ROUTE = b"<sip:192.0.2.254;lr>"
NEW_RURI = b"sip:+14155550142@example.sip.ashburn-ix.twilio.com"
RECEIVED = b"198.51.100.7"
RPORT = 5062
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 203.0.113.50\r\ns=-\r\nc=IN IP4 203.0.113.50\r\nt=0 0\r\n"
    b"m=audio 20000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
)


def messages() -> tuple[bytes, bytes, bytes]:
    """The INVITE and the 180/200 a proxy receives back for it (our Via on top)."""
    invite = INVITE_PATH.read_bytes()
    req = parse(invite)
    assert isinstance(req, Request)
    plan = ForwardPlan(via=OUR_VIA, request_uri=NEW_RURI, record_route=(RECORD_ROUTE,),
                       received=RECEIVED, rport=RPORT)
    sent = parse(forward_request(req, plan))
    assert isinstance(sent, Request)
    contact = ((b"Contact", b"<sip:+14155550142@203.0.113.50:5060>"),)
    rr = ((b"Record-Route", RECORD_ROUTE),)
    ringing = build_response(sent, 180, to_tag=b"tw-7f3a", headers=rr + contact)
    ok = build_response(sent, 200, to_tag=b"tw-7f3a",
                        headers=rr + contact + ((b"Content-Type", b"application/sdp"),), body=SDP)
    return invite, ringing, ok


def _batch_size(fn: Callable[[], object], seconds: float) -> int:
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed > seconds / 8:
            return max(1, int(n * seconds / elapsed))
        n *= 2


def _rate(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t0)


def measure_pair(
    ours: Callable[[], object], theirs: Callable[[], object], repeats: int, seconds: float
) -> tuple[float, float]:
    """Median msg/s of both, batches interleaved so machine load hits both alike."""
    n_ours, n_theirs = _batch_size(ours, seconds), _batch_size(theirs, seconds)
    a, b = [], []
    for _ in range(repeats):
        a.append(_rate(ours, n_ours))
        b.append(_rate(theirs, n_theirs))
    return statistics.median(a), statistics.median(b)


def sipedge_ops(invite: bytes, ringing: bytes, ok: bytes) -> dict[str, Callable[[], object]]:
    plan = ForwardPlan(via=OUR_VIA, request_uri=NEW_RURI, record_route=(RECORD_ROUTE,),
                       received=RECEIVED, rport=RPORT)
    responses = [ringing, ok]
    state = [0]

    def forward() -> bytes:
        req = parse(invite)
        assert isinstance(req, Request)
        return forward_request(req, plan)

    def strip() -> bytes:
        state[0] ^= 1
        resp = parse(responses[state[0]])
        assert isinstance(resp, Response)
        return strip_top_via(resp)

    return {"parse": lambda: parse(invite), "forward": forward, "strip": strip}


def sipmessage_ops(invite: bytes, ringing: bytes, ok: bytes) -> dict[str, Callable[[], object]]:
    from sipmessage import URI, Address, Message, Via

    our_via = Via.parse(OUR_VIA.decode())
    rr = Address.parse(RECORD_ROUTE.decode())
    new_uri = URI.parse(NEW_RURI.decode())
    responses = [ringing, ok]
    state = [0]

    def forward() -> bytes:
        m = Message.parse(invite)
        vias = m.via
        top = vias[0]
        params = top.parameters.replace(received=RECEIVED.decode(), rport=str(RPORT))
        vias[0] = dataclasses.replace(top, parameters=params)
        m.via = [our_via, *vias]
        mf = m.max_forwards
        m.max_forwards = 70 if mf is None else min(mf - 1, 70)
        m.record_route = [rr, *m.record_route]
        m.uri = new_uri  # type: ignore[union-attr]
        return bytes(m)

    def strip() -> bytes:
        state[0] ^= 1
        m = Message.parse(responses[state[0]])
        m.via = m.via[1:]
        return bytes(m)

    return {"parse": lambda: Message.parse(invite), "forward": forward, "strip": strip}


def measure_ns(fn: Callable[[], object], repeats: int, seconds: float) -> float:
    """Median nanoseconds per call of ``fn``."""
    n = _batch_size(fn, seconds)
    return statistics.median(1e9 / _rate(fn, n) for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=0.25, help="per timed batch")
    args = ap.parse_args()
    invite, ringing, ok = messages()
    ours = sipedge_ops(invite, ringing, ok)
    theirs = sipmessage_ops(invite, ringing, ok)
    import sipmessage

    print(f"python {sys.version.split()[0]}, sipmessage {sipmessage.__version__}, "
          f"median of {args.repeats} batches of ~{args.seconds}s; message {INVITE_PATH.name} "
          f"({len(invite)} B), 180 ({len(ringing)} B), 200 ({len(ok)} B)")
    print(f"{'operation':<34}{'sipedge msg/s':>15}{'sipmessage msg/s':>19}{'ratio':>9}")
    ratios = {}
    labels = {"parse": "parse only (INVITE)", "forward": "parse + forward + serialise",
              "strip": "response Via-strip (180/200)"}
    for op in ("parse", "forward", "strip"):
        a, b = measure_pair(ours[op], theirs[op], args.repeats, args.seconds)
        ratios[op] = a / b
        print(f"{labels[op]:<34}{a:>15,.0f}{b:>19,.0f}{a / b:>8.1f}x")
    scan = measure_ns(lambda: call_id_of(invite), args.repeats, args.seconds)
    full = measure_ns(lambda: parse(invite).call_id, args.repeats, args.seconds)
    print(f"{'call_id_of (INVITE, steering)':<34}{scan:>12,.0f} ns  "
          f"(parse + .call_id {full:,.0f} ns, {full / scan:.1f}x)")
    print(f"forward_vs_sipmessage={ratios['forward']:.1f}x strip_vs_sipmessage={ratios['strip']:.1f}x")


if __name__ == "__main__":
    main()
