"""``sipedge verify``: OPTIONS to every gateway, and the test call, against lab agents.

Addresses: the test block (outside 127.0.9.3, Virginia 127.0.9.64–66, Oregon
127.0.10.64–66), never the loopback lab in use and never Twilio: ``conf/sipedge.toml``
is only *planned* here (pure), never verified.
"""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sipedge import verify
from sipedge.cli import main
from sipedge.config import Config, load_config, parse_config
from sipedge.lab.agent import UserAgent
from sipedge.sip.address import Endpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
[inside]
listen = ["udp:127.0.9.1:5080"]
allow  = ["127.0.9.1/32"]
pbx    = "127.0.9.10:5060"

[outside]
listen = ["udp:127.0.9.3:5060"]
domain = "example"

[[edges]]
name     = "ashburn-ix"
gateways = {virginia}

[[edges]]
name     = "san-jose-ix"
gateways = ["127.0.10.64", "127.0.10.65", "127.0.10.66"]
"""
VIRGINIA = '["127.0.9.64", "127.0.9.65", "127.0.9.66"]'


def config(virginia: str = VIRGINIA) -> Config:
    return parse_config(CONFIG.format(virginia=virginia), "<verify test>")


def gateway(host: str, **kwargs: object) -> UserAgent:
    return UserAgent(host, Endpoint("udp", host, 5060), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def gateways() -> AsyncIterator[dict[str, UserAgent]]:
    """127.0.9.64 answers; .65 has nothing bound (ICMP); .66 answers; Oregon .65 is a
    black hole, the other two answer. A socket on the outside listener's address stands
    for a running daemon."""
    agents = {h: gateway(h) for h in ("127.0.9.64", "127.0.9.66", "127.0.10.64",
                                      "127.0.10.65", "127.0.10.66")}
    for agent in agents.values():
        await agent.start()
    await agents["127.0.10.65"].go_down("blackhole")
    daemon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    daemon.bind(("127.0.9.3", 5060))
    try:
        yield agents
    finally:
        daemon.close()
        for agent in agents.values():
            await agent.close()


async def run(cfg: Config, **kwargs: object) -> tuple[int, str]:
    out = io.StringIO()
    code = await verify.verify(cfg, out=out, **kwargs)  # type: ignore[arg-type]
    return code, out.getvalue()


def rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in text.splitlines()
            if line.startswith(("ashburn-ix/", "san-jose-ix/"))}


async def test_verify_lists_every_gateway_with_code_or_reason(
        gateways: dict[str, UserAgent]) -> None:
    code, text = await run(config(), timeout_s=1.0)
    assert code == 0, text
    table = rows(text)
    assert list(table) == [
        "ashburn-ix/127.0.9.64:5060", "ashburn-ix/127.0.9.65:5060",
        "ashburn-ix/127.0.9.66:5060", "san-jose-ix/127.0.10.64:5060",
        "san-jose-ix/127.0.10.65:5060", "san-jose-ix/127.0.10.66:5060"]
    assert table["ashburn-ix/127.0.9.64:5060"][:2] == ["ashburn-ix", "200"]
    assert table["ashburn-ix/127.0.9.64:5060"][3] == "ms"
    assert table["ashburn-ix/127.0.9.65:5060"] == ["ashburn-ix", "-", "unreachable", "(ICMP)"]
    assert table["san-jose-ix/127.0.10.65:5060"] == ["san-jose-ix", "-", "timeout"]
    assert table["san-jose-ix/127.0.10.66:5060"][1] == "200"
    assert "ashburn-ix: 2 of 3 gateways answered" in text
    assert "from 127.0.9.3 (ephemeral port)" in text
    # The OPTIONS is the daemon's probe: Request-URI host = the edge's localized domain.
    assert gateways["127.0.9.64"].request_uris[-1] == b"sip:example.sip.ashburn-ix.twilio.com"
    assert gateways["127.0.10.64"].request_uris[-1] == b"sip:example.sip.san-jose-ix.twilio.com"
    assert gateways["127.0.9.64"].received["INVITE"] == 0  # no --call: no call


async def test_verify_fails_when_no_gateway_of_the_first_edge_answers(
        gateways: dict[str, UserAgent]) -> None:
    code, text = await run(config('["127.0.9.65", "127.0.10.65:5060"]'), timeout_s=0.6)
    assert code == verify.EX_UNAVAILABLE == 69
    assert "no gateway of the first edge (ashburn-ix) answered" in text
    # Oregon answering does not make the first edge usable.
    code, text = await run(config('["127.0.9.65"]'), timeout_s=0.6)
    assert code == 69 and rows(text)["san-jose-ix/127.0.10.64:5060"][1] == "200"


async def test_verify_call_answered_is_acked_and_hung_up(
        gateways: dict[str, UserAgent]) -> None:
    # The first Virginia gateway is down: the call goes to the first one that answered.
    code, text = await run(config('["127.0.9.65", "127.0.9.66", "127.0.9.64"]'),
                           call="+14155550100", timeout_s=1.0)
    assert code == 0, text
    assert "test call: INVITE sip:+14155550100@example.sip.ashburn-ix.twilio.com\n" in text
    assert "  to ashburn-ix/127.0.9.66:5060 from udp:127.0.9.3:" in text
    assert "180 Ringing" in text and "200 OK" in text
    assert "(answered by ashburn-ix/127.0.9.66:5060)" in text
    assert "ACK sent; BYE sent -> 200 OK" in text and "final: 200" in text
    callee = gateways["127.0.9.66"]
    assert callee.received["INVITE"] == 1 and callee.received["ACK"] == 1
    assert callee.received["BYE"] == 1 and callee.received["CANCEL"] == 0
    assert b"sip:+14155550100@example.sip.ashburn-ix.twilio.com" in callee.request_uris
    assert gateways["127.0.9.64"].received["INVITE"] == 0


async def test_verify_call_still_ringing_is_cancelled(gateways: dict[str, UserAgent]) -> None:
    ringing = gateways["127.0.9.64"]
    ringing.answer_s = None  # rings until cancelled
    code, text = await run(config(), call="+14155550100", timeout_s=0.8)
    assert code == 0, text
    assert "no final response in 0.8 s: CANCEL sent -> 200 OK" in text
    assert "487 Request Terminated" in text and "final: 487" in text
    await asyncio.sleep(0.05)  # the ACK is the last datagram: let the agent read it
    assert ringing.received["CANCEL"] == 1 and ringing.received["ACK"] == 1
    assert ringing.received["BYE"] == 0


async def test_verify_call_with_no_answer_at_all_fails(gateways: dict[str, UserAgent]) -> None:
    # The OPTIONS is answered, then the gateway goes silent before the INVITE.
    agent = gateways["127.0.9.64"]
    cfg = config('["127.0.9.64"]')
    rows_ = [verify.Target("x", "ashburn-ix", agent.local, b"example.sip.ashburn-ix.twilio.com")]
    await agent.go_down("blackhole")
    out = io.StringIO()
    assert not await verify._call(cfg, rows_[0], "+14155550100", 0.6, out, b"t")
    assert "no response (timeout); nothing to cancel" in out.getvalue()


def test_verify_plan_of_the_production_config_is_twilio_and_nothing_is_sent() -> None:
    # Planned only: verify on conf/sipedge.toml would contact Twilio, so it never runs here.
    cfg = load_config(ROOT / "conf" / "sipedge.toml")
    targets = verify.plan(cfg)
    assert [t.id for t in targets][:3] == [
        "ashburn-ix/208.78.112.64:5060", "ashburn-ix/208.78.112.65:5060",
        "ashburn-ix/208.78.112.66:5060"]
    assert {t.domain_host for t in targets} == {b"example.sip.ashburn-ix.twilio.com",
                                               b"example.sip.san-jose-ix.twilio.com"}
    assert verify.call_request_uri(cfg, "+14155550100") == (
        b"sip:+14155550100@example.sip.ashburn-ix.twilio.com")
    assert verify.source_host(cfg) == "172.16.0.2"


def test_verify_call_number_is_checked_before_anything_is_sent(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sipedge.toml"
    path.write_text(CONFIG.format(virginia=VIRGINIA))
    assert main(["verify", "--config", str(path), "--call", "+1 415 555"]) == 64
    assert "--call" in capsys.readouterr().err
    assert main(["verify", "--config", str(path), "--timeout", "0"]) == 64
