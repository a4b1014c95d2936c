"""One worker process for tests/transport/test_steer.py: shared UDP socket, links, steering.

Run as ``python -m tests.helpers.steer_worker --group G --index I --count N --fd F
--listener udp:HOST:PORT --loop asyncio|uvloop`` with the shared socket's descriptor ``F``
inherited (``pass_fds``). It serves the socket through ``Transports(inherited=...)``
behind a ``SteeringSink`` and ``WorkerLinks``, exactly as a worker of the daemon would,
and records everything that reaches its inner sink. It speaks JSON lines: it prints
``{"ready": pid}`` once started, then answers each command read from stdin with one line:

* ``{"cmd": "report"}`` → every message delivered here, with ``how`` ``"read"`` (this
  worker read it and kept it) or ``"steered"`` (a sibling handed it over), the probe
  results received, and the link counters;
* ``{"cmd": "probe", "gateway": id, "result": {...}}`` → broadcast that probe result;
* ``{"cmd": "quit"}`` → close everything and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from collections.abc import Callable
from typing import Any

from sipedge.gateway.probe import ProbeResult, Replied, SendFailed, TimedOut
from sipedge.sip.address import Endpoint
from sipedge.transport import Transports
from sipedge.transport.steer import SteeringSink, WorkerLinks


def result_to_json(result: ProbeResult) -> dict[str, Any]:
    """A probe result as a JSON object (floats round-trip exactly through ``json``)."""
    if isinstance(result, Replied):
        return {"kind": "Replied", "code": result.code, "rtt_s": result.rtt_s,
                "retry_after_s": result.retry_after_s}
    if isinstance(result, TimedOut):
        return {"kind": "TimedOut"}
    return {"kind": "SendFailed", "reason": result.reason}


def result_from_json(obj: dict[str, Any]) -> ProbeResult:
    """The inverse of :func:`result_to_json`."""
    if obj["kind"] == "Replied":
        return Replied(obj["code"], obj["rtt_s"], obj["retry_after_s"])
    if obj["kind"] == "TimedOut":
        return TimedOut()
    return SendFailed(obj["reason"])


class Recorder:
    """The inner sink: keeps every message with how it got here."""

    def __init__(self) -> None:
        self.messages: list[list[str]] = []
        self.probes: list[list[Any]] = []

    def keeper(self, how: str) -> Callable[[bytes, Endpoint, Endpoint, float], None]:
        def keep(data: bytes, peer: Endpoint, local: Endpoint, now: float) -> None:
            self.messages.append([data.hex(), str(peer), str(local), how])

        return keep

    def receive(self, data: bytes, peer: Endpoint, local: Endpoint, now: float) -> None:
        self.keeper("read")(data, peer, local, now)

    def transport_error(self, dest: Endpoint, now: float) -> None:
        pass

    def is_answerable(self, peer: Endpoint, local: Endpoint, now: float) -> bool:
        return True

    def probe(self, gateway_id: str, result: ProbeResult, now: float) -> None:
        self.probes.append([gateway_id, result_to_json(result)])


async def serve(args: argparse.Namespace) -> None:
    transport, host, port = args.listener.split(":")
    configured = Endpoint(transport, host, int(port))
    shared = socket.socket(fileno=args.fd)
    recorder = Recorder()
    links = WorkerLinks(args.group, args.index, args.count,
                        deliver=recorder.keeper("steered"), probe_result=recorder.probe)
    steering = SteeringSink(recorder, links)
    transports = Transports(steering, inherited={configured: shared})
    await transports.start([configured])
    steering.shared = frozenset(transports.inherited_udp)
    await links.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": args.index}), flush=True)
    while line := await reader.readline():
        command = json.loads(line)
        if command["cmd"] == "report":
            counters = {name: getattr(links, name) for name in (
                "steered_out", "steered_in", "steer_failed", "probes_out", "probes_in",
                "probes_failed", "link_malformed", "link_refused")}
            answer: dict[str, Any] = {"messages": recorder.messages, "probes": recorder.probes,
                                      "counters": counters}
        elif command["cmd"] == "probe":
            result = result_from_json(command["result"])
            answer = {"reached": links.broadcast_probe(command["gateway"], result)}
        else:
            break
        print(json.dumps(answer), flush=True)
    pipe.close()  # uvloop refuses to close a loop with an open pipe transport (EBUSY)
    links.close()
    await transports.aclose()
    shared.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--group", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--listener", required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), required=True)
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
