"""A small HTTP/1.1 server for the admin API, on asyncio streams (TCP or a Unix socket).

Why not aiohttp's server: the admin API is a handful of GET and POST routes without
bodies, and importing ``aiohttp.web`` cost 12.5 MB of RSS in every process (measured:
``import sipedge.daemon`` 47.5 MB with it, 35.0 MB without). With ``[process] workers``
that is paid by the supervisor and by each worker, against issue 14's memory goal
(150 MB for all processes together). aiohttp stays the client the tests check this
server with.

What it does, and what it refuses:

* one request per connection, answered with ``Connection: close`` (scrapes and operator
  commands come seconds apart; no keep-alive state to bound); pipelined bytes after the
  first request are never read, so nothing can be smuggled behind it;
* the request head (request line and headers) must arrive within ``HEAD_TIMEOUT_S`` and
  fit in ``MAX_HEAD`` bytes, else 408 / 431 and close (slowloris on the admin port);
* a body is read only as far as ``Content-Length`` says, up to ``MAX_BODY`` (413
  beyond), and ignored: no route takes one; ``Transfer-Encoding`` is answered 501;
* at most ``MAX_CONNECTIONS`` at once: a connection beyond that is answered 503;
* ``GET``, ``HEAD`` (the GET answer without its body) and ``POST`` reach the handler;
  any other method is 405; an HTTP version other than 1.0 or 1.1 is 505;
* the handler gets the method and the percent-decoded path (no query string: no route
  reads one) and returns a ``Reply``; an exception in it is a 500 and a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from sipedge.sip.address import Endpoint

__all__ = ["Handler", "HttpServer", "Reply"]

log = logging.getLogger(__name__)

#: Longest request line plus headers accepted.
MAX_HEAD = 16 * 1024
#: Largest body read (and thrown away).
MAX_BODY = 64 * 1024
#: Time for the whole request head to arrive, and for a body after it.
HEAD_TIMEOUT_S = 10.0
#: Connections served at once.
MAX_CONNECTIONS = 64

TEXT = "text/plain; charset=utf-8"
JSON = "application/json; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP answer: status, body and its content type."""

    status: int
    body: bytes
    content_type: str = TEXT

    @classmethod
    def text(cls, text: str, status: int = 200) -> Reply:
        return cls(status, text.encode("utf-8"))

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Reply:
        return cls(status, json.dumps(value).encode("utf-8"), JSON)


#: ``handler(method, path)``: the answer to one request.
Handler = Callable[[str, str], Awaitable[Reply]]


class _Refused(Exception):
    """A request answered without reaching the handler."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.reply = Reply.text(text + "\n", status)


def _encode(reply: Reply, *, head_only: bool) -> bytes:
    try:
        reason = http.HTTPStatus(reply.status).phrase
    except ValueError:
        reason = "Unknown"
    head = (f"HTTP/1.1 {reply.status} {reason}\r\nContent-Type: {reply.content_type}\r\n"
            f"Content-Length: {len(reply.body)}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + (b"" if head_only else reply.body)


def _parse_head(head: bytes) -> tuple[str, str, int]:
    """(method, path, body length) of a request head, or ``_Refused``."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise _Refused(400, "bad request line")
    method_b, target_b, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise _Refused(505 if version.startswith(b"HTTP/") else 400,
                       "HTTP/1.0 or HTTP/1.1 only")
    try:
        method = method_b.decode("ascii")
        target = target_b.decode("ascii")
    except UnicodeDecodeError:
        raise _Refused(400, "request line is not ASCII") from None
    if not method.isalpha() or not method.isupper():
        raise _Refused(400, "bad method")
    if target.startswith(("http://", "https://")):  # absolute-form (RFC 9112 §3.2.2)
        target = urlsplit(target).path or "/"
    if not target.startswith("/"):
        raise _Refused(400, "bad request target")
    length: int | None = None
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise _Refused(400, "bad header line")
        lname = name.lower()
        if lname == b"transfer-encoding":
            raise _Refused(501, "Transfer-Encoding is not supported")
        if lname == b"content-length":
            text = value.strip()
            if not text.isdigit() or (length is not None and int(text) != length):
                raise _Refused(400, "bad Content-Length")
            length = int(text)
    if length is not None and length > MAX_BODY:
        raise _Refused(413, f"body over {MAX_BODY} bytes")
    path = unquote(target.partition("?")[0], errors="strict")
    return method, path, length or 0


class HttpServer:
    """``await start_tcp(endpoint)`` or ``await start_unix(address)`` … ``await aclose()``.

    Args:
        handler: answers each request (see ``Handler``).
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start_tcp(self, listen: Endpoint) -> Endpoint:
        """Serve on ``listen`` (tcp; port 0 picks one): the bound endpoint.

        Raises:
            OSError: the address cannot be bound (nothing is left listening).
        """
        server = await asyncio.start_server(self._serve, listen.host, listen.port,
                                            limit=MAX_HEAD + 2, reuse_address=True)
        self._servers.append(server)
        port = listen.port
        for sock in server.sockets:
            port = int(sock.getsockname()[1])
            break
        return Endpoint("tcp", listen.host, port)

    async def start_unix(self, address: str) -> None:
        """Serve on the Unix socket ``address`` (a leading NUL: the abstract namespace).

        Raises:
            OSError: the address cannot be bound.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(address)
            sock.listen(64)
            sock.setblocking(False)
            server = await asyncio.start_unix_server(self._serve, sock=sock,
                                                     limit=MAX_HEAD + 2)
        except OSError:
            sock.close()
            raise
        self._servers.append(server)

    async def aclose(self) -> None:
        """Stop listening and drop open connections (idempotent)."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for server in servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if len(self._tasks) > MAX_CONNECTIONS:
                reply, head_only = Reply.text("too many connections\n", 503), False
            else:
                reply, head_only = await self._answer(reader)
            writer.write(_encode(reply, head_only=head_only))
            await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT_S)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or stopped reading: nothing to answer
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[Reply, bool]:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            except asyncio.LimitOverrunError:
                raise _Refused(431, f"request head over {MAX_HEAD} bytes") from None
            except TimeoutError:
                raise _Refused(408, "request head not received in time") from None
            if len(head) > MAX_HEAD:
                raise _Refused(431, f"request head over {MAX_HEAD} bytes")
            try:
                method, path, length = _parse_head(head[:-4])
            except UnicodeDecodeError:
                raise _Refused(400, "bad percent-encoding in the path") from None
            if length:
                try:
                    await asyncio.wait_for(reader.readexactly(length), HEAD_TIMEOUT_S)
                except TimeoutError:
                    raise _Refused(408, "request body not received in time") from None
            if method not in ("GET", "HEAD", "POST"):
                raise _Refused(405, f"method {method} not allowed")
        except _Refused as refused:
            return refused.reply, False
        try:
            reply = await self._handler("GET" if method == "HEAD" else method, path)
        except Exception:
            log.exception("admin API: %s %s failed", method, path)
            reply = Reply.text("internal error\n", 500)
        return reply, method == "HEAD"
