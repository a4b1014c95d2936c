"""CoreDriver: the one timer, the outbox flush, and the safety net around the core."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sipedge.config import parse_config
from sipedge.daemon import build_core
from sipedge.proxy.core import ProxyCore
from sipedge.sip.address import Endpoint
from sipedge.transport.driver import CoreDriver

LAB = (Path(__file__).resolve().parents[2] / "conf" / "lab.toml").read_text()
PBX = Endpoint("udp", "127.0.0.1", 5099)
INSIDE = Endpoint("udp", "127.0.0.1", 5080)


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Endpoint, Endpoint]] = []

    def send(self, data: bytes, dest: Endpoint, local: Endpoint) -> None:
        self.sent.append((data, dest, local))


class BrokenCore(ProxyCore):
    """A core with a bug on the receive path (stands in for any unexpected exception)."""

    def receive(self, data: bytes, peer: Endpoint, local: Endpoint, now: float) -> None:
        raise KeyError("bug")


async def test_driver_survives_a_core_bug_and_keeps_timers_running() -> None:
    loop = asyncio.get_running_loop()
    real = build_core(parse_config(LAB), loop.time())
    core = BrokenCore(real.settings, real.pool, monitor=real.monitor)
    core.start(loop.time())
    driver = CoreDriver(core, loop, lambda _event: None)
    sender = Recorder()
    driver.attach(sender)
    driver.receive(b"INVITE sip:x@y SIP/2.0\r\n\r\n", PBX, INSIDE, loop.time())
    assert driver.internal_errors == 1
    # The loop goes on: the armed timer still sends the first OPTIONS probes.
    for _ in range(50):
        if any(d.startswith(b"OPTIONS") for d, _, _ in sender.sent):
            break
        await asyncio.sleep(0.1)
    assert any(d.startswith(b"OPTIONS") for d, _, _ in sender.sent)
    driver.close()


async def test_driver_flushes_answers_and_arms_one_timer() -> None:
    loop = asyncio.get_running_loop()
    core = build_core(parse_config(LAB), loop.time())
    driver = CoreDriver(core, loop, lambda _event: None)
    sender = Recorder()
    driver.attach(sender)
    options = (b"OPTIONS sip:127.0.0.1:5080 SIP/2.0\r\n"
               b"Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-drv-1\r\n"
               b"Max-Forwards: 70\r\nFrom: <sip:pbx@127.0.0.1>;tag=a\r\n"
               b"To: <sip:127.0.0.1:5080>\r\nCall-ID: drv-1\r\nCSeq: 1 OPTIONS\r\n"
               b"Content-Length: 0\r\n\r\n")
    driver.receive(options, PBX, INSIDE, loop.time())
    # Answered at once (503: no gateway UP yet), from the inside listener.
    assert [(d.split(b"\r\n")[0], dest, local) for d, dest, local in sender.sent] == [
        (b"SIP/2.0 503 No Gateway Available", PBX, INSIDE)]
    assert driver._timer is not None
    driver.close()
    assert driver._timer is None


class QueryBrokenCore(ProxyCore):
    """A core whose is_answerable has a bug."""

    def is_answerable(self, peer: Endpoint, local: Endpoint, now: float) -> bool:
        raise KeyError("bug")


async def test_driver_says_not_answerable_when_the_core_query_fails() -> None:
    loop = asyncio.get_running_loop()
    real = build_core(parse_config(LAB), loop.time())
    core = QueryBrokenCore(real.settings, real.pool, monitor=real.monitor)
    driver = CoreDriver(core, loop, lambda _event: None)
    assert driver.is_answerable(PBX, INSIDE, loop.time()) is False  # silence, never a 513
    assert driver.internal_errors == 1
    assert CoreDriver(real, loop, lambda _event: None).is_answerable(PBX, INSIDE, loop.time())
