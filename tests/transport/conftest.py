"""Fixtures for the transport tests: a recording sink, loopback addresses, both loops.

Only 127.0.0.200–127.0.0.209 with ephemeral ports are used, so these tests never collide
with the lab addresses (127.0.0.1, .3, .10, .64–.66, 127.0.1.x) other suites bind.
(The worker tests, ``test_inherited.py`` and ``test_steer.py``, keep to 127.0.14.0/24
and abstract Unix names containing ``test-steer``.)

A test marked :data:`BOTH_LOOPS` runs once on asyncio's loop and once on uvloop's (the
production loop on Linux; skipped where uvloop is not installed), through
pytest-asyncio's ``pytest_asyncio_loop_factories`` hook below. Every other async test
keeps the one default asyncio loop it always had.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pytest

from sipedge.sip.address import Endpoint

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

#: Mark a module (``pytestmark = BOTH_LOOPS``) or test to run it on both event loops.
BOTH_LOOPS = pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])


def loop_factories() -> dict[str, LoopFactory]:
    """The event loops a :data:`BOTH_LOOPS` test runs on (uvloop's where installed)."""
    factories: dict[str, LoopFactory] = {"asyncio": asyncio.new_event_loop}
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Linux CI always has it
        return factories
    factories["uvloop"] = uvloop.new_event_loop
    return factories


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, LoopFactory]:
    """pytest-asyncio hook: both loops for tests that ask, the default one for the rest."""
    marker = item.get_closest_marker("asyncio")
    if marker is not None and "loop_factories" in marker.kwargs:
        return loop_factories()
    return {"asyncio": asyncio.new_event_loop}

HOST_A = "127.0.0.200"
HOST_B = "127.0.0.201"
HOST_C = "127.0.0.202"
HOST_NOBODY = "127.0.0.209"


@dataclass
class Received:
    data: bytes
    peer: Endpoint
    local: Endpoint
    now: float


@dataclass
class RecordingSink:
    """A MessageSink that keeps everything it is given.

    ``strangers``: source hosts it says not to answer (``is_answerable``), as the proxy
    core does for a source outside its ACL under ``reject_unknown = "drop"``.
    """

    messages: list[Received] = field(default_factory=list)
    errors: list[Endpoint] = field(default_factory=list)
    strangers: frozenset[str] = frozenset()

    def receive(self, data: bytes, peer: Endpoint, local: Endpoint, now: float) -> None:
        self.messages.append(Received(data, peer, local, now))

    def transport_error(self, dest: Endpoint, now: float) -> None:
        self.errors.append(dest)

    def is_answerable(self, peer: Endpoint, local: Endpoint, now: float) -> bool:
        return peer.host not in self.strangers


async def until(predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
    """Poll the loop until ``predicate()`` holds (fails the test after ``timeout_s``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def sip_request(n: int = 1, body: bytes = b"", method: bytes = b"OPTIONS") -> bytes:
    """A small well-formed request (Content-Length set) numbered ``n``."""
    return (
        method + b" sip:gw@127.0.0.201 SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP 127.0.0.200:5060;branch=z9hG4bK" + str(n).encode() + b"\r\n"
        b"Max-Forwards: 70\r\n"
        b"From: <sip:a@127.0.0.200>;tag=1\r\n"
        b"To: <sip:gw@127.0.0.201>\r\n"
        b"Call-ID: call-" + str(n).encode() + b"\r\n"
        b"CSeq: " + str(n).encode() + b" " + method + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def free_port(host: str) -> int:
    """A TCP port on ``host`` that nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port
