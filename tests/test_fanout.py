"""The supervisor's admin fan-out: merged metrics and the workers' Unix-socket API (issue 14).

Two real cores (harnesses) stand for two workers: their expositions are merged as the
parent merges its workers', and the result must read like one process's — summed calls,
gateway states once — and pass ``promtool check metrics``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from sipedge.admin import AdminServer
from sipedge.fanout import merge_expositions, request
from sipedge.metrics import exposition
from sipedge.workers import WorkerRole, worker_tag
from tests.test_metrics import Lab, drive_mixed_calls, parse, run_promtool

VA = "ashburn-ix"


def total(scrape: object, name: str) -> float:
    """Every sample of ``name`` summed, whatever its labels."""
    return sum(scrape.series(name).values())  # type: ignore[attr-defined]


def _merged(*labs: Lab) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest

    from sipedge.fanout import _Merged

    texts = [exposition(lab.registry).decode() for lab in labs]
    registry = CollectorRegistry()
    registry.register(_Merged(merge_expositions(texts)))
    return generate_latest(registry)


@pytest.fixture
async def two() -> AsyncIterator[tuple[Lab, Lab]]:
    loop = asyncio.get_running_loop()
    labs = (Lab(loop), Lab(loop))
    try:
        yield labs
    finally:
        for lab in labs:
            lab.driver.close()


async def test_counters_and_histograms_sum_and_gateway_states_come_once(
        two: tuple[Lab, Lab]) -> None:
    first, second = two
    drive_mixed_calls(first.h)
    drive_mixed_calls(second.h, n=10)
    drive_mixed_calls(second.h, n=20)
    one, other = first.scrape(), second.scrape()
    merged = parse(_merged(first, second))
    label = {"direction": "outbound", "edge": VA}
    assert merged("sipedge_calls_answered_total", **label) == (
        one("sipedge_calls_answered_total", **label)
        + other("sipedge_calls_answered_total", **label)) == 3
    for name in ("sipedge_requests_received_total", "sipedge_failovers_total",
                 "sipedge_answer_time_seconds_count", "sipedge_answer_time_seconds_bucket"):
        assert total(merged, name) == total(one, name) + total(other, name) > 0, name
    # Every worker holds the same pool: the states are the first worker's, not doubled.
    assert merged.series("sipedge_gateway_up") == one.series("sipedge_gateway_up")
    assert total(merged, "sipedge_gateway_up") == 6
    assert merged("sipedge_state", state="ready") == 1


async def test_merged_exposition_passes_promtool(two: tuple[Lab, Lab]) -> None:
    first, second = two
    drive_mixed_calls(first.h)
    drive_mixed_calls(second.h)
    result = run_promtool("check", "metrics", stdin=_merged(first, second))
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


async def test_one_source_merges_to_itself(two: tuple[Lab, Lab]) -> None:
    first, _ = two
    drive_mixed_calls(first.h)
    def ours(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[
            tuple[str, frozenset[tuple[str, str]]], float]:
        # process_*/python_gc_* move between two scrapes; sipedge's own do not.
        return {k: v for k, v in samples.items() if k[0].startswith("sipedge_")}

    merged, alone = ours(parse(_merged(first)).samples), ours(first.scrape().samples)
    assert merged == alone and len(merged) > 300


async def test_request_reaches_an_admin_api_on_an_abstract_socket(
        two: tuple[Lab, Lab]) -> None:
    first, _ = two
    address = f"\0sipedge-test-fanout-{os.getpid()}"
    admin = AdminServer(first.driver, metrics=lambda: exposition(first.registry))
    await admin.start_unix(address)
    try:
        assert await request(address, "GET", "/healthz") == (200, "text/plain; charset=utf-8",
                                                             b"ok\n")
        status, content_type, body = await request(address, "GET", "/metrics")
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        assert b"sipedge_gateway_up{" in body
        status, _, body = await request(address, "POST", "/drain")
        assert status == 200 and first.h.core.draining
    finally:
        await admin.aclose()
    with pytest.raises(OSError, match="test-fanout"):
        await request(address, "GET", "/healthz", timeout_s=1.0)


def test_worker_role_round_trips_through_the_environment() -> None:
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        from sipedge.sip.address import Endpoint

        endpoint = Endpoint("udp", "127.0.0.1", 5080)
        text = WorkerRole.encode("g1", 1, 2, os.getppid(), {endpoint: sock.fileno()})
        role = WorkerRole.from_env({"SIPEDGE_WORKER": text})
        assert role is not None
        assert (role.group, role.index, role.count, role.probes) == ("g1", 1, 2, False)
        assert role.admin_address == "\0sipedge-g1-admin-1"
        assert list(role.sockets) == [endpoint]
        assert role.sockets[endpoint].fileno() == sock.fileno()
        role.sockets[endpoint].detach()  # the same descriptor as ``sock``: close it once
        assert worker_tag({"SIPEDGE_WORKER": text}) == "w1"
    finally:
        sock.close()
    assert WorkerRole.from_env({}) is None and worker_tag({}) is None
    with pytest.raises(ValueError, match="SIPEDGE_WORKER"):
        WorkerRole.from_env({"SIPEDGE_WORKER": "{not json"})
