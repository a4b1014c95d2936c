"""What each process imports (issue 14: memory of all processes together).

A worker (``sipedge.daemon``) serves its admin API with ``sipedge.httpd``, not aiohttp,
and imports dnspython only when a config names a host; the supervisor (``sipedge.workers``
with its fan-out) imports neither the daemon nor the proxy core. Each is checked in a
fresh interpreter, since this one has imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("aiohttp", "dns", "sipedge.daemon", "sipedge.proxy.core")


def loaded(*modules: str) -> set[str]:
    code = ("import json, sys\n" + "".join(f"import {m}\n" for m in modules)
            + f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, timeout=60).stdout
    return set(json.loads(out))


@pytest.mark.parametrize(("modules", "expected"), [
    (("sipedge.daemon",), {"sipedge.daemon", "sipedge.proxy.core"}),
    (("sipedge.cli", "sipedge.workers", "sipedge.fanout", "sipedge.transport"), set()),
])
def test_heavy_imports(modules: tuple[str, ...], expected: set[str]) -> None:
    assert loaded(*modules) == expected


def test_a_resolver_imports_dnspython() -> None:
    code = ("import sys\nfrom sipedge.transport.dns import Rfc3263Resolver\n"
            "assert 'dns' not in sys.modules\n"
            "Rfc3263Resolver([('127.0.0.1', 53)])\nassert 'dns.asyncresolver' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
