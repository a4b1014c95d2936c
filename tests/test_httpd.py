"""``sipedge.httpd`` on real sockets (127.0.15.1, an abstract Unix socket): what it answers,
what it refuses, and its limits. aiohttp's client checks it as a real HTTP peer; raw
sockets send what a client library would not.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from sipedge import httpd
from sipedge.fanout import request
from sipedge.httpd import HttpServer, Reply
from sipedge.sip.address import Endpoint

HOST = "127.0.15.1"


class Recorder:
    """A handler that records what it was asked and answers with the path."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []
        self.hold = asyncio.Event()
        self.hold.set()

    async def __call__(self, method: str, path: str) -> Reply:
        self.asked.append((method, path))
        await self.hold.wait()
        if path == "/boom":
            raise RuntimeError("handler bug")
        if path == "/json":
            return Reply.json({"path": path}, 201)
        return Reply.text(f"{method} {path}\n")


@pytest.fixture
async def served() -> AsyncIterator[tuple[Recorder, Endpoint]]:
    recorder = Recorder()
    server = HttpServer(recorder)
    bound = await server.start_tcp(Endpoint("tcp", HOST, 0))
    try:
        yield recorder, bound
    finally:
        await server.aclose()


async def raw(bound: Endpoint, data: bytes, *, read_timeout: float = 5.0) -> bytes:
    """Send ``data`` and read the answer until the server closes."""
    reader, writer = await asyncio.open_connection(bound.host, bound.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), read_timeout)
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def test_get_post_and_json_through_aiohttp(served: tuple[Recorder, Endpoint]) -> None:
    recorder, bound = served
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{bound.hostport}/metrics?x=1") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == httpd.TEXT
            assert resp.headers["Connection"] == "close"
            assert await resp.text() == "GET /metrics\n"
        async with session.post(f"http://{bound.hostport}/drain", data=b"ignored") as resp:
            assert resp.status == 200 and await resp.text() == "POST /drain\n"
        async with session.get(f"http://{bound.hostport}/json") as resp:
            assert resp.status == 201 and await resp.json() == {"path": "/json"}
    assert recorder.asked == [("GET", "/metrics"), ("POST", "/drain"), ("GET", "/json")]


async def test_path_is_percent_decoded_and_absolute_form_accepted(
        served: tuple[Recorder, Endpoint]) -> None:
    recorder, bound = served
    answer = await raw(bound, b"POST /gateways/ashburn-ix%2F127.0.0.212%3A5060/drain HTTP/1.1"
                              b"\r\nHost: x\r\n\r\n")
    assert status_of(answer) == 200
    answer = await raw(bound, b"GET http://x:9/gateways HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(answer) == 200
    assert recorder.asked == [("POST", "/gateways/ashburn-ix/127.0.0.212:5060/drain"),
                              ("GET", "/gateways")]


async def test_head_answers_the_get_without_its_body(served: tuple[Recorder, Endpoint]) -> None:
    recorder, bound = served
    answer = await raw(bound, b"HEAD /healthz HTTP/1.0\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status_of(answer) == 200 and body == b""
    assert b"Content-Length: 13\r\n" in head  # the GET's body length: "GET /healthz\n"
    assert recorder.asked == [("GET", "/healthz")]


@pytest.mark.parametrize(("data", "status"), [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /x HTTP/2.0\r\n\r\n", 505),
    (b"GET /x SIP/2.0\r\n\r\n", 400),
    (b"get /x HTTP/1.1\r\n\r\n", 400),
    (b"GET x HTTP/1.1\r\n\r\n", 400),
    (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
    (b"GET /%ff HTTP/1.1\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\n Folded: x\r\n\r\n", 400),
    (b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST /x HTTP/1.1\r\nContent-Length: 65537\r\n\r\n", 413),
    (b"DELETE /x HTTP/1.1\r\n\r\n", 405),
])
async def test_bad_requests_never_reach_the_handler(
        served: tuple[Recorder, Endpoint], data: bytes, status: int) -> None:
    recorder, bound = served
    answer = await raw(bound, data)
    assert status_of(answer) == status, answer
    assert recorder.asked == []


async def test_oversized_head_is_431(served: tuple[Recorder, Endpoint]) -> None:
    recorder, bound = served
    answer = await raw(bound, b"GET /x HTTP/1.1\r\nX: " + b"a" * httpd.MAX_HEAD + b"\r\n\r\n")
    assert status_of(answer) == 431 and recorder.asked == []


async def test_handler_exception_is_500_and_logged(
        served: tuple[Recorder, Endpoint], caplog: pytest.LogCaptureFixture) -> None:
    _, bound = served
    answer = await raw(bound, b"GET /boom HTTP/1.1\r\n\r\n")
    assert status_of(answer) == 500
    assert any("GET /boom failed" in r.getMessage() for r in caplog.records)


async def test_one_request_per_connection_pipelined_bytes_ignored(
        served: tuple[Recorder, Endpoint]) -> None:
    recorder, bound = served
    answer = await raw(bound, b"GET /a HTTP/1.1\r\n\r\nPOST /drain HTTP/1.1\r\n\r\n")
    assert answer.count(b"HTTP/1.1 ") == 1 and recorder.asked == [("GET", "/a")]


async def test_slow_head_gets_408_at_the_deadline(
        served: tuple[Recorder, Endpoint], monkeypatch: pytest.MonkeyPatch) -> None:
    recorder, bound = served
    monkeypatch.setattr(httpd, "HEAD_TIMEOUT_S", 0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await raw(bound, b"GET /slow HTTP/1.1\r\nHost:", read_timeout=5.0)
    assert status_of(answer) == 408
    assert loop.time() - started < 3.0 and recorder.asked == []


async def test_connections_beyond_the_cap_get_503(
        served: tuple[Recorder, Endpoint], monkeypatch: pytest.MonkeyPatch) -> None:
    recorder, bound = served
    monkeypatch.setattr(httpd, "MAX_CONNECTIONS", 2)
    recorder.hold.clear()
    held = [await asyncio.open_connection(bound.host, bound.port) for _ in range(2)]
    for _, writer in held:
        writer.write(b"GET /held HTTP/1.1\r\n\r\n")
    while len(recorder.asked) < 2:
        await asyncio.sleep(0.01)
    assert status_of(await raw(bound, b"GET /third HTTP/1.1\r\n\r\n")) == 503
    recorder.hold.set()
    for reader, writer in held:
        assert status_of(await reader.read()) == 200
        writer.close()
    assert status_of(await raw(bound, b"GET /again HTTP/1.1\r\n\r\n")) == 200


async def test_close_drops_open_connections_and_frees_the_port() -> None:
    server = HttpServer(Recorder())
    bound = await server.start_tcp(Endpoint("tcp", HOST, 0))
    reader, writer = await asyncio.open_connection(bound.host, bound.port)
    writer.write(b"GET /half")
    await writer.drain()
    await server.aclose()
    assert await asyncio.wait_for(reader.read(), 5.0) == b""
    writer.close()
    again = HttpServer(Recorder())
    assert (await again.start_tcp(bound)) == bound  # the port is free again at once
    await again.aclose()


async def test_bind_failure_raises_oserror() -> None:
    first = HttpServer(Recorder())
    bound = await first.start_tcp(Endpoint("tcp", HOST, 0))
    try:
        with pytest.raises(OSError):
            await HttpServer(Recorder()).start_tcp(bound)
    finally:
        await first.aclose()


async def test_unix_abstract_socket_with_the_fanout_client() -> None:
    address = f"\0sipedge-test-httpd-{os.getpid()}"
    server = HttpServer(Recorder())
    await server.start_unix(address)
    try:
        status, content_type, body = await request(address, "GET", "/gateways")
        assert (status, content_type, body) == (200, httpd.TEXT, b"GET /gateways\n")
        taken = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with pytest.raises(OSError):
            taken.bind(address)
        taken.close()
    finally:
        await server.aclose()
