"""proxy.steering: the owning worker of a raw message is crc32(Call-ID) % count."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from collections import Counter

import pytest

from sipedge.proxy.steering import owner_of
from tests.helpers.wire import make_request, make_response

VIA = (b"SIP/2.0/UDP 127.0.0.1:5060;rport;branch=z9hG4bKst1",)


def invite(call_id: bytes) -> bytes:
    return make_request(b"INVITE", b"sip:+14155550100@127.0.0.1:5080", via=VIA, call_id=call_id)


def test_owner_is_crc32_of_the_call_id_modulo_count() -> None:
    for count in (1, 2, 3, 8, 64):
        assert owner_of(invite(b"abc@pbx"), count) == zlib.crc32(b"abc@pbx") % count


def test_every_message_of_a_call_has_the_same_owner() -> None:
    call_id = b"0c9f3e55-7a21-4d6b@pbx"
    request = invite(call_id)
    cancel = make_request(b"CANCEL", b"sip:+14155550100@127.0.0.1:5080", via=VIA, call_id=call_id)
    bye = make_request(b"BYE", b"sip:x@127.0.0.1", via=VIA, call_id=call_id, cseq=2,
                       headers=[(b"Route", b"<sip:127.0.0.1:5180;lr>")])
    compact = request.replace(b"Call-ID: ", b"i:  ")
    owners = {owner_of(m, 4) for m in (request, cancel, bye, compact,
                                       make_response(request, 180), make_response(request, 200))}
    assert owners == {zlib.crc32(call_id) % 4}


def test_no_call_id_no_owner() -> None:
    assert owner_of(invite(b"x").replace(b"Call-ID: x\r\n", b""), 4) is None
    assert owner_of(b"\r\n\r\n", 4) is None  # a keep-alive
    assert owner_of(b"", 2) is None


def test_a_single_worker_owns_everything() -> None:
    assert {owner_of(invite(b"%d@pbx" % n), 1) for n in range(50)} == {0}


def test_calls_spread_evenly_over_workers() -> None:
    counts = Counter(owner_of(invite(b"call-%d@10.0.0.5" % n), 4) for n in range(4000))
    assert set(counts) == {0, 1, 2, 3}
    assert all(800 < c < 1200 for c in counts.values()), counts


@pytest.mark.parametrize("seed", ["0", "random"])
def test_owner_is_the_same_in_another_process(seed: str) -> None:
    # hash() of bytes is salted per process; the owner must not be.
    code = ("from sipedge.proxy.steering import owner_of; import sys; "
            "print(owner_of(sys.stdin.buffer.read(), 7))")
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run([sys.executable, "-c", code], input=invite(b"steady@pbx"),
                         capture_output=True, check=True, env=env)
    assert int(out.stdout) == owner_of(invite(b"steady@pbx"), 7)
