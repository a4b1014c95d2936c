"""RFC 3263 gateway resolution (NAPTR → SRV → A/AAAA) with dnspython's asyncio resolver.

Theory of operation
-------------------
A gateway given in config as a host name is a :class:`Query` (name, port or None, the edge's
transport). :class:`Rfc3263Resolver` turns one query into a :class:`Resolution`, never
raising for DNS trouble (house rule 6: the network causes values, not exceptions):

* **port given** (RFC 3263 §4.2): A and AAAA of the name, each address at that port.
* **no port** (RFC 3263 §4.1, §4.2): NAPTR of the name, keeping only records whose service
  matches the configured transport (``SIP+D2U`` for udp, ``SIP+D2T`` for tcp, ``SIPS+D2T``
  for tls) and whose flag is ``s``, in (order, preference) order; the first whose SRV
  lookup yields targets wins. With no matching NAPTR, the SRV name is built from the
  transport (``_sip._udp.``, ``_sip._tcp.``, ``_sips._tcp.``). With no SRV records either,
  A/AAAA of the name at the transport's default port. A name that already starts with
  ``_sip.``/``_sips.`` is taken as an SRV name.
* **SRV** (RFC 2782): *all* targets are kept with their priority and weight; each target
  is resolved to A/AAAA. A target of ``.`` means "no service here" and is skipped.

The answer's TTL is the smallest TTL of every record set that contributed.

:class:`NameWatcher` keeps a set of queries resolved: one task per query re-resolves it
when its TTL (clamped to ``[min_ttl_s, max_ttl_s]``) runs out. On failure the last good
answer is kept (logged once per outage, at WARNING; the recovery at INFO) and the query is
retried after ``retry_s``. When a query's set of targets changes, ``on_change`` is called
and the daemon rebuilds the gateway pool (``GatewayPool.replace`` carries health over).

A query that has *never* resolved has no answer; the daemon puts a placeholder gateway for
it in the pool (its endpoint carries the name, not an address) and marks it DOWN with reason
``"dns"`` via :func:`hold_unresolved`: it shows up in ``GET /gateways`` and metrics, is
never offered to a call and is never probed (:func:`is_placeholder`).

Nothing here blocks the event loop: every lookup is a dnspython asyncio query with a
bounded lifetime, and the resolver's own cache is off (the watcher does the TTL caching).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sipedge.gateway.health import Health
from sipedge.gateway.pool import Gateway, GatewayPool
from sipedge.sip.address import Endpoint, default_port

if TYPE_CHECKING:
    import dns.rdatatype
    import dns.resolver

__all__ = [
    "DNS_REASON",
    "Answer",
    "NameWatcher",
    "Query",
    "Resolution",
    "Rfc3263Resolver",
    "Target",
    "Unresolved",
    "hold_unresolved",
    "is_placeholder",
]

log = logging.getLogger(__name__)

#: The reason shown for a gateway whose name never resolved.
DNS_REASON = "dns"

# RFC 3263 §4.1 NAPTR services and the SRV prefixes per transport (RFC 3261 §26.2 for sips).
_NAPTR_SERVICE = {"udp": b"SIP+D2U", "tcp": b"SIP+D2T", "tls": b"SIPS+D2T"}
_SRV_PREFIX = {"udp": "_sip._udp.", "tcp": "_sip._tcp.", "tls": "_sips._tcp."}


@dataclass(frozen=True, slots=True)
class Query:
    """One configured gateway name to resolve.

    Attributes:
        host: the DNS name (no trailing dot needed).
        port: the port given in config, or None (then NAPTR/SRV are used, RFC 3263 §4.2).
        transport: the edge's transport, ``udp``/``tcp``/``tls``.
    """

    host: str
    port: int | None
    transport: str

    def __str__(self) -> str:
        text = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"{self.transport}:{text}"


@dataclass(frozen=True, slots=True)
class Target:
    """One resolved destination.

    Attributes:
        endpoint: transport, IP literal, port.
        priority: SRV priority (lower is preferred); 0 when no SRV was involved.
        weight: SRV weight (RFC 2782: share within a priority); 0 when no SRV was involved.
    """

    endpoint: Endpoint
    priority: int = 0
    weight: int = 0


@dataclass(frozen=True, slots=True)
class Answer:
    """A successful resolution.

    Attributes:
        targets: every destination, ordered by (priority, -weight), then as answered.
        ttl_s: the smallest TTL among the records used (seconds, unclamped).
        srv: True when the targets came from SRV records (their weights are meaningful).
    """

    targets: tuple[Target, ...]
    ttl_s: float
    srv: bool = False


@dataclass(frozen=True, slots=True)
class Unresolved:
    """A failed resolution (NXDOMAIN, no usable records, timeout, no nameserver).

    Attributes:
        reason: for the log line.
    """

    reason: str


Resolution = Answer | Unresolved


class _Lookup:
    """One resolution in progress: accumulates the minimum TTL."""

    __slots__ = ("failed", "srv", "ttl", "why")

    def __init__(self) -> None:
        self.ttl: float | None = None
        self.why = "no records"
        self.srv = False
        self.failed = False  # a server failure (timeout, SERVFAIL), not "no such records"

    def seen(self, ttl: float) -> None:
        self.ttl = ttl if self.ttl is None else min(self.ttl, ttl)


class Rfc3263Resolver:
    """Resolves gateway names per RFC 3263 with dnspython's asyncio resolver.

    Args:
        nameservers: explicit ``(ip, port)`` servers (tests point this at loopback);
            None reads the system configuration (``/etc/resolv.conf``) once.
        timeout_s: bound on each lookup (dnspython ``lifetime``), retries included.
    """

    def __init__(
        self, nameservers: Sequence[tuple[str, int]] | None = None, *, timeout_s: float = 2.0
    ) -> None:
        # dnspython is imported by the first resolver, not with the module: a config of
        # addresses only never builds one, and a worker saves 3.75 MB of RSS (issue 14).
        import dns.asyncresolver
        import dns.nameserver

        if nameservers is None:
            resolver = dns.asyncresolver.Resolver(configure=True)
        else:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port)
                                    for ip, port in nameservers]
        resolver.cache = None  # NameWatcher caches by TTL; a stale cache would hide changes
        resolver.lifetime = timeout_s
        resolver.timeout = timeout_s
        self._resolver = resolver

    async def resolve(self, query: Query) -> Resolution:
        """Resolve one gateway name (never raises for DNS failures).

        Args:
            query: the name, optional port, transport.

        Returns:
            An ``Answer`` with at least one target, or ``Unresolved`` with the reason.
        """
        lookup = _Lookup()
        if query.port is not None:
            # RFC 3263 §4.2: an explicit port means A/AAAA only.
            targets = await self._addresses(query.host, query.port, query.transport, lookup)
        elif query.host.startswith(("_sip.", "_sips.")):
            targets = await self._srv(query.host, query.transport, lookup)
        else:
            # Fall back only on "no such records": after a timeout or SERVFAIL the next
            # step would build a different (wrong) answer from a transient failure.
            targets = await self._naptr(query.host, query.transport, lookup)
            if not targets and not lookup.failed:
                srv_name = _SRV_PREFIX[query.transport] + query.host
                targets = await self._srv(srv_name, query.transport, lookup)
            if not targets and not lookup.failed:
                port = default_port(query.transport)
                targets = await self._addresses(query.host, port, query.transport, lookup)
        if not targets or lookup.ttl is None:
            return Unresolved(lookup.why)
        # Deterministic order (record order within an RRset is arbitrary), so an unchanged
        # answer compares equal and does not rebuild the pool.
        ordered = sorted(set(targets), key=lambda t: (t.priority, -t.weight, t.endpoint.host,
                                                      t.endpoint.port))
        return Answer(tuple(ordered), lookup.ttl, lookup.srv)

    async def _query(
        self, name: str, rdtype: dns.rdatatype.RdataType, lookup: _Lookup
    ) -> dns.resolver.Answer | None:
        import dns.exception
        import dns.resolver

        try:
            answer = await self._resolver.resolve(name, rdtype, search=False,
                                                  raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            lookup.why = f"{name}: no such name"
            return None
        except dns.resolver.NoNameservers:
            lookup.why, lookup.failed = f"{name} {rdtype.name}: no nameserver answered", True
            return None
        except dns.exception.Timeout:
            lookup.why, lookup.failed = f"{name} {rdtype.name}: timed out", True
            return None
        except dns.exception.DNSException as exc:
            lookup.why, lookup.failed = f"{name} {rdtype.name}: {exc}", True
            return None
        if answer.rrset is None:
            return None
        lookup.seen(answer.rrset.ttl)
        return answer

    async def _naptr(self, name: str, transport: str, lookup: _Lookup) -> list[Target]:
        import dns.rdatatype
        from dns.rdtypes.IN.NAPTR import NAPTR

        answer = await self._query(name, dns.rdatatype.NAPTR, lookup)
        if answer is None:
            return []
        wanted = _NAPTR_SERVICE[transport]
        records = [r for r in answer if isinstance(r, NAPTR)
                   and r.service.upper() == wanted and r.flags.lower() == b"s"]
        records.sort(key=lambda r: (r.order, r.preference))
        for record in records:
            # RFC 3263 §4.1: flag "s" means the replacement is an SRV name.
            targets = await self._srv(record.replacement.to_text(), transport, lookup)
            if targets:
                return targets
        return []

    async def _srv(self, name: str, transport: str, lookup: _Lookup) -> list[Target]:
        import dns.name
        import dns.rdatatype
        from dns.rdtypes.IN.SRV import SRV

        answer = await self._query(name, dns.rdatatype.SRV, lookup)
        if answer is None:
            return []
        records = [r for r in answer if isinstance(r, SRV) and r.target != dns.name.root]
        per_target = await asyncio.gather(*(
            self._addresses(r.target.to_text(), r.port, transport, lookup, r.priority, r.weight)
            for r in records
        ))
        found = [t for targets in per_target for t in targets]
        lookup.srv = lookup.srv or bool(found)
        return found

    async def _addresses(
        self, name: str, port: int, transport: str, lookup: _Lookup,
        priority: int = 0, weight: int = 0,
    ) -> list[Target]:
        import dns.rdatatype

        answers = await asyncio.gather(self._query(name, dns.rdatatype.A, lookup),
                                       self._query(name, dns.rdatatype.AAAA, lookup))
        return [Target(Endpoint(transport, r.to_text(), port), priority, weight)
                for answer in answers if answer is not None for r in answer]


class NameWatcher:
    """Keeps gateway names resolved, refreshing each on its TTL; keeps the last good answer.

    Args:
        resolver: does the lookups.
        queries: the names to watch (duplicates are watched once).
        on_change: called (on the loop, no arguments) after a query's targets changed,
            including its first successful answer; read ``answers()`` then.
        min_ttl_s: lower bound on the refresh interval (protects the DNS server).
        max_ttl_s: upper bound (a long TTL must not hide a renumbering for a day).
        retry_s: wait after a failed lookup; ``min_ttl_s`` by default.
    """

    def __init__(
        self,
        resolver: Rfc3263Resolver,
        queries: Iterable[Query],
        on_change: Callable[[], None],
        *,
        min_ttl_s: float = 30.0,
        max_ttl_s: float = 3600.0,
        retry_s: float | None = None,
    ) -> None:
        if not 0 < min_ttl_s <= max_ttl_s:
            raise ValueError("need 0 < min_ttl_s <= max_ttl_s")
        self._resolver = resolver
        self._queries = tuple(dict.fromkeys(queries))
        self._on_change = on_change
        self.min_ttl_s = min_ttl_s
        self.max_ttl_s = max_ttl_s
        self.retry_s = min_ttl_s if retry_s is None else retry_s
        self._answers: dict[Query, Answer] = {}
        self._failing: set[Query] = set()
        self._tried: set[Query] = set()
        self._first_round = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def queries(self) -> tuple[Query, ...]:
        """The watched names."""
        return self._queries

    def answers(self) -> Mapping[Query, Answer]:
        """The last good answer of every query that ever resolved (a copy)."""
        return dict(self._answers)

    def refresh_in(self, answer: Answer) -> float:
        """Seconds until ``answer`` is refreshed: its TTL clamped to the bounds."""
        return min(max(answer.ttl_s, self.min_ttl_s), self.max_ttl_s)

    async def start(self, wait_s: float) -> None:
        """Start watching; return once every name was tried once, or after ``wait_s``.

        The bound keeps a slow or dead DNS server from delaying the daemon's start; names
        answered later still call ``on_change``.
        """
        if self._tasks:
            raise RuntimeError("NameWatcher.start() called twice")
        if not self._queries:
            return
        self._tasks = [asyncio.create_task(self._watch(q), name=f"dns {q}")
                       for q in self._queries]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_round.wait(), wait_s)

    async def aclose(self) -> None:
        """Stop every refresh task."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self, query: Query) -> None:
        while True:
            result = await self._resolver.resolve(query)
            delay = self._apply(query, result)
            self._tried.add(query)
            if len(self._tried) == len(self._queries):
                self._first_round.set()
            await asyncio.sleep(delay)

    def _apply(self, query: Query, result: Resolution) -> float:
        """Record one outcome; returns the delay until the next lookup."""
        old = self._answers.get(query)
        if isinstance(result, Unresolved):
            if query not in self._failing:
                # Logged once per outage; the repeats go to DEBUG.
                self._failing.add(query)
                if old is None:
                    log.warning("DNS: %s does not resolve (%s); its gateway stays DOWN (dns)",
                                query, result.reason)
                else:
                    log.warning("DNS: %s lookup failed (%s); keeping the last good answer "
                                "(%d targets)", query, result.reason, len(old.targets))
            else:
                log.debug("DNS: %s still failing: %s", query, result.reason)
            return self.retry_s
        if query in self._failing:
            self._failing.discard(query)
            log.info("DNS: %s resolves again", query)
        self._answers[query] = result
        if old is None or old.targets != result.targets:
            log.info("DNS: %s -> %s", query,
                     ", ".join(f"{t.endpoint.hostport} (prio {t.priority}, weight {t.weight})"
                               for t in result.targets))
            self._on_change()
        return self.refresh_in(result)


def is_placeholder(gateway: Gateway) -> bool:
    """True for the stand-in of a gateway name that never resolved (its host is a name).

    Such a gateway must never be probed or offered: sending to a name would make the socket
    layer resolve it synchronously, blocking the event loop.
    """
    try:
        ipaddress.ip_address(gateway.endpoint.host)
    except ValueError:
        return True
    return False


def hold_unresolved(pool: GatewayPool, now: float) -> list[str]:
    """Mark every placeholder of ``pool`` DOWN with reason ``"dns"``; return their ids.

    A placeholder that already carries that state (carried over by ``GatewayPool.replace``)
    keeps its ``since``. The health machine has no DNS input (it is about SIP reachability),
    so the record is set directly: the state is not the outcome of any observation, and
    no event is emitted (``NameWatcher`` logs the failure once).

    Args:
        pool: a freshly built pool (before or after ``replace``).
        now: when the name was found unresolved.

    Returns:
        The placeholder ids (for the probe schedule to leave out).
    """
    ids: list[str] = []
    for gateway in pool.gateways():
        if not is_placeholder(gateway):
            continue
        ids.append(gateway.id)
        record = pool.record(gateway.id)
        if record.state is not Health.DOWN or record.reason != DNS_REASON:
            pool.mark_down(gateway.id, DNS_REASON, now)
    return ids
