"""Worker links: hand a datagram read from a shared UDP listener to the worker owning its call.

Theory of operation
-------------------
With N workers serving one shared UDP socket (``Transports(inherited=...)``), the kernel
gives each datagram to whichever worker reads first. A call's transactions live in one
worker, so an INVITE's retransmission, its CANCEL, or the ACK for a non-2xx final
response must reach that worker. :class:`SteeringSink` wraps the sink (the driver): for a
datagram that arrived on a shared listener it computes ``owner_of(data, count)``
(crc32 of the Call-ID modulo ``count``) and, when the owner is another worker, hands the
datagram over with :meth:`WorkerLinks.steer`. The owner's ``deliver`` gets the original
bytes, peer and listener, as if it had read the datagram itself. Two kinds of message
are never steered:

* stream messages: a TCP/TLS connection belongs to the worker that accepted it;
* datagrams on a worker's own endpoints: its Via and Record-Route name those, so
  responses and in-dialog requests come straight to it.

A steer that cannot be made returns False, and the caller handles the message itself.
An INVITE handled by the "wrong" worker still works; a lost one does not.

Links: each worker listens on an abstract-namespace ``AF_UNIX`` ``SOCK_SEQPACKET`` socket
named by :func:`link_address` (no file to clean up). On the first record for a sibling
it opens one connection to that sibling's name and keeps it; the sibling reads it with
``loop.add_reader``. This works the same on asyncio and uvloop, since neither offers a
transport for SEQPACKET. Every send is one non-blocking ``send()``. It fails at once,
and never waits, in three cases:

* ``ECONNREFUSED``: the sibling is not listening (not started yet, or restarting);
* ``EPIPE``/``ECONNRESET``: the sibling went away. We reconnect once, so a restarted
  sibling is reached again by the next record;
* ``EAGAIN``: the sibling's queue is full.

Why SEQPACKET connections, not one ``SOCK_DGRAM`` socket per worker:

* Queue depth. Linux lets an *unconnected* Unix datagram socket queue only
  ``net.unix.max_dgram_qlen`` datagrams, 10 by default. Measured on the dev box: the
  11th 1 KB datagram to a busy owner failed with ``EAGAIN``. A 30 ms GC pause in the
  owner would then turn every steer into a "handle it yourself". A connected record
  socket is bounded only by the sender's send buffer: 3,641 records of 1 KB with the
  4 MiB asked for below (when ``net.core.wmem_max`` allows it), well over a second of
  steered traffic.
* Authentication. Any local process can send to an abstract name: there are no file
  permissions, and a forged "peer" would bypass the source ACL. A connection carries
  its peer's credentials (``SO_PEERCRED``), so both ends refuse a process of another
  user (``link_refused``).
* Restart detection. A sibling's exit shows up as ``EPIPE`` on the next send; nothing
  has to be polled.

Wire format, one record per SEQPACKET message. The first byte names the record's kind
and layout version; a layout change takes a new kind byte. Integers are big-endian.

* ``0x01`` steered datagram, then:

  - the listener endpoint: host length L (1 byte, 1–255), host (L ASCII bytes, an IP
    literal), port (2 bytes);
  - the peer endpoint, encoded the same way;
  - the datagram, unchanged, to the end of the record. The transport is always udp.

* ``0x02`` probe result, then:

  - gateway id length G (2 bytes, at most 1,024), gateway id (G bytes of UTF-8);
  - one tag byte with its fields:

    - ``R`` ``Replied``: code (2 bytes), rtt_s (IEEE 754 double), a has-Retry-After
      byte (0/1), retry_after_s (double; 0.0 when absent);
    - ``T`` ``TimedOut``: nothing more;
    - ``F`` ``SendFailed``: reason length (2 bytes), reason (UTF-8).

Records are decoded with explicit lengths and ``struct``, never with pickle: the bytes
come from a socket. A record that is short, of an unknown kind, has bad lengths, a host
that is not an address, non-UTF-8 text or trailing bytes is counted in
``link_malformed`` and dropped; nothing raises out of the read callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Final

from sipedge.gateway.probe import ProbeResult, Replied, SendFailed, TimedOut
from sipedge.logs import RateLimitedLogger
from sipedge.proxy.steering import owner_of
from sipedge.sip.address import Endpoint
from sipedge.transport.base import MessageSink, TransportError, TransportErrorReason

__all__ = [
    "LINK_BUFFER_BYTES",
    "STEER_FAILURE_REASONS",
    "SteeringSink",
    "WorkerLinks",
    "link_address",
]

_log = logging.getLogger(__name__)

#: Requested SO_SNDBUF/SO_RCVBUF of every link socket (like udp.RCVBUF_BYTES). The send
#: buffer bounds how many records can wait for a busy sibling (module docstring); Linux
#: caps it at net.core.wmem_max.
LINK_BUFFER_BYTES: Final = 4 * 1024 * 1024
#: Every key of :attr:`WorkerLinks.steer_failed` (present from zero, for metrics).
STEER_FAILURE_REASONS: Final = ("unreachable", "queue_full", "unencodable")

_STEERED: Final = 0x01
_PROBE: Final = 0x02
_REPLIED: Final = ord("R")
_TIMED_OUT: Final = ord("T")
_SEND_FAILED: Final = ord("F")
_LENGTH: Final = struct.Struct(">H")
_REPLIED_FIELDS: Final = struct.Struct(">HdBd")
#: The largest UDP payload (and so the largest datagram a shared listener can read).
_MAX_DATAGRAM: Final = 65535
#: The largest gateway id and SendFailed reason a probe record carries (a reason is cut
#: to this many characters; an id longer than this many bytes is not broadcast).
_MAX_GATEWAY_ID: Final = 1024
_MAX_REASON_CHARS: Final = 1024
#: Kind, two endpoints of at most 255 host bytes each, the datagram: the largest record.
_MAX_RECORD: Final = 1 + 2 * (1 + 255 + 2) + _MAX_DATAGRAM
#: Records read per readiness callback (libuv's UDP read batch): a burst from a sibling
#: cannot hold the loop for long.
_READ_BATCH: Final = 32
#: Endpoint pairs remembered for encoding and decoding (UdpListener bounds its peers so).
_CACHE_LIMIT: Final = 4096
#: accept() failures other than "nothing to accept" pause accepting for this long rather
#: than spin on a listener that stays readable (out of descriptors).
_ACCEPT_RETRY_S: Final = 1.0
_PEERCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid

Deliver = Callable[[bytes, Endpoint, Endpoint, float], None]
ProbeReceiver = Callable[[str, ProbeResult, float], None]


def link_address(group: str, index: int) -> str:
    """The abstract Unix socket name of worker ``index``'s link in ``group``.

    Args:
        group: chosen by the parent for one set of workers (e.g. its pid), so two
            sipedge instances on one host do not meet.
        index: the worker's index, ``0 <= index < count``.

    Returns:
        ``"\\0sipedge-{group}-{index}"`` (the leading NUL makes it abstract).
    """
    return f"\0sipedge-{group}-{index}"


def _push_endpoint(endpoint: Endpoint) -> bytes:
    host = endpoint.host.encode("ascii")
    if not 0 < len(host) < 256:
        raise ValueError(f"host of {endpoint} is not 1-255 bytes")
    return bytes((len(host),)) + host + endpoint.port.to_bytes(2, "big")


def _pull_endpoint(key: bytes, at: int) -> tuple[Endpoint, int]:
    """The endpoint encoded at ``key[at:]`` and the offset after it (ValueError if bad)."""
    length = key[at]
    host = key[at + 1 : at + 1 + length].decode("ascii")
    port_at = at + 1 + length
    if not length or len(key) < port_at + 2:
        raise ValueError("short endpoint")
    # An IP literal, as every peer and listener is: garbage is refused before it becomes
    # an Endpoint the core would key transactions and ACL decisions by.
    socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    return Endpoint("udp", host, int.from_bytes(key[port_at : port_at + 2], "big")), port_at + 2


def _encode_probe(gateway_id: str, result: ProbeResult) -> bytes:
    """A probe-result record (ValueError/struct.error when it cannot be encoded)."""
    gid = gateway_id.encode("utf-8")
    if len(gid) > _MAX_GATEWAY_ID:
        raise ValueError(f"gateway id longer than {_MAX_GATEWAY_ID} bytes")
    head = bytes((_PROBE,)) + _LENGTH.pack(len(gid)) + gid
    if isinstance(result, Replied):
        after = result.retry_after_s
        fields = _REPLIED_FIELDS.pack(
            result.code, result.rtt_s, after is not None, 0.0 if after is None else after
        )
        return head + bytes((_REPLIED,)) + fields
    if isinstance(result, TimedOut):
        return head + bytes((_TIMED_OUT,))
    reason = result.reason[:_MAX_REASON_CHARS].encode("utf-8")
    return head + bytes((_SEND_FAILED,)) + _LENGTH.pack(len(reason)) + reason


def _decode_probe(record: bytes) -> tuple[str, ProbeResult]:
    """The gateway id and result of a probe record (ValueError/struct.error/IndexError)."""
    (gid_length,) = _LENGTH.unpack_from(record, 1)
    tag_at = 3 + gid_length
    if gid_length > _MAX_GATEWAY_ID or len(record) <= tag_at:
        raise ValueError("bad gateway id length")
    gateway_id = record[3:tag_at].decode("utf-8")
    tag = record[tag_at]
    result: ProbeResult
    if tag == _REPLIED:
        end = tag_at + 1 + _REPLIED_FIELDS.size
        code, rtt_s, has_after, after = _REPLIED_FIELDS.unpack_from(record, tag_at + 1)
        if has_after not in (0, 1):
            raise ValueError("bad Retry-After flag")
        result = Replied(code, rtt_s, after if has_after else None)
    elif tag == _TIMED_OUT:
        end = tag_at + 1
        result = TimedOut()
    elif tag == _SEND_FAILED:
        (reason_length,) = _LENGTH.unpack_from(record, tag_at + 1)
        end = tag_at + 3 + reason_length
        if len(record) < end:
            raise ValueError("short reason")
        result = SendFailed(record[tag_at + 3 : end].decode("utf-8"))
    else:
        raise ValueError("unknown probe result tag")
    if len(record) != end:
        raise ValueError("trailing bytes")
    return gateway_id, result


class WorkerLinks:
    """This worker's link to its siblings: steered datagrams and probe results, both ways.

    Args:
        group: the parent's name for this set of workers (see :func:`link_address`).
        index: this worker, ``0 <= index < count``.
        count: how many workers there are (this one included).
        deliver: called with ``(data, peer, local, now)`` for each datagram a sibling
            steered here: normally the inner sink's ``receive`` (the driver's), not the
            :class:`SteeringSink`, so a steered datagram is never steered again.
        probe_result: called with ``(gateway_id, result, now)`` for each probe result
            a sibling broadcast.

    Attributes:
        steered_out: datagrams handed to a sibling.
        steered_in: datagrams siblings handed here (delivered).
        steer_failed: steers refused, by reason (every one of
            :data:`STEER_FAILURE_REASONS` present from zero): ``unreachable`` (the
            owner is not listening or is restarting, or these links are closed),
            ``queue_full`` (the owner is not reading fast enough), ``unencodable``
            (the datagram is over 65,535 bytes or an endpoint is not an address).
        probes_out: probe results sent (one per sibling reached).
        probes_in: probe results received.
        probes_failed: probe results that did not reach a sibling (or could not be
            encoded).
        link_malformed: received records that could not be decoded (dropped).
        link_refused: link connections refused because the process at the other end
            runs as another user.
    """

    def __init__(
        self,
        group: str,
        index: int,
        count: int,
        *,
        deliver: Deliver,
        probe_result: ProbeReceiver,
    ) -> None:
        if not 0 <= index < count:
            raise ValueError(f"worker index {index} is not in 0..{count - 1}")
        self.group = group
        self.index = index
        self.count = count
        self._deliver = deliver
        self._probe_result = probe_result
        self._addresses = [link_address(group, i) for i in range(count)]
        self._out: list[socket.socket | None] = [None] * count
        self._inbound: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accept_retry: asyncio.TimerHandle | None = None
        self._closed = False
        self._uid = os.geteuid()
        # Encoded endpoint pairs, and decoded ones by their bytes: a trunk has a handful
        # of peers, and a frozen dataclass costs a microsecond to build (UdpListener._peers
        # does the same). Bounded for scans. The encoded ones are keyed by the *identity*
        # of the two Endpoints (the listener reuses one object per source address):
        # hashing two dataclasses costs 0.6 us, two ints 0.1 us. Each entry holds both
        # objects, so neither id can be reused by another object while it is cached.
        self._headers: dict[tuple[int, int], tuple[Endpoint, Endpoint, bytes]] = {}
        self._pairs: dict[bytes, tuple[Endpoint, Endpoint]] = {}
        self._limited = RateLimitedLogger(_log)
        self.steered_out = 0
        self.steered_in = 0
        self.steer_failed: dict[str, int] = dict.fromkeys(STEER_FAILURE_REASONS, 0)
        self.probes_out = 0
        self.probes_in = 0
        self.probes_failed = 0
        self.link_malformed = 0
        self.link_refused = 0

    @property
    def address(self) -> str:
        """This worker's link name (abstract)."""
        return self._addresses[self.index]

    async def start(self) -> None:
        """Listen on this worker's link name and start reading siblings' records.

        Siblings are connected lazily, on the first record for each, so workers may
        start in any order.

        Raises:
            TransportError: BIND_FAILED when the name is taken (another process of
                the group holds it: a previous incarnation still exiting, or a
                stranger squatting it); CLOSED when called twice or after close.
        """
        if self._loop is not None or self._closed:
            raise TransportError(TransportErrorReason.CLOSED, "worker links already started")
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.bind(self.address)
            sock.listen(max(self.count, 16))  # one connection per sibling, with room
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            detail = f"worker link {self.address[1:]!r}: {exc}"
            raise TransportError(TransportErrorReason.BIND_FAILED, detail) from exc
        self._loop = loop
        self._listener = sock
        loop.add_reader(sock.fileno(), self._accept)

    # -- sending ------------------------------------------------------------------------

    def steer(self, owner: int, data: bytes, peer: Endpoint, local: Endpoint) -> bool:
        """Hand one datagram to worker ``owner``; synchronous, never blocks, never raises.

        Args:
            owner: the worker that owns the datagram's call (``!= index``).
            data: the datagram as read, unchanged.
            peer: where it came from.
            local: the shared listener it arrived on.

        Returns:
            True when the owner's link took it; False when it did not (the owner is
            not listening or restarting, its queue is full, or the record cannot be
            encoded): the caller then handles the datagram itself.
        """
        if owner == self.index or not 0 <= owner < self.count:
            self.steer_failed["unreachable"] += 1  # a caller's slip: never a link to itself
            return False
        if len(data) > _MAX_DATAGRAM:
            self.steer_failed["unencodable"] += 1
            return False
        cached = self._headers.get((id(peer), id(local)))
        header = cached[2] if cached is not None else self._remember_header(peer, local)
        if header is None:
            return False
        failure = self._send(owner, header + data)
        if failure is None:
            self.steered_out += 1
            return True
        self.steer_failed[failure] += 1
        return False

    def broadcast_probe(self, gateway_id: str, result: ProbeResult) -> int:
        """Send one probe result to every other worker (failures are counted, not raised).

        Args:
            gateway_id: the gateway probed (the config id).
            result: what the probe gave.

        Returns:
            How many siblings the result reached.
        """
        try:
            record = _encode_probe(gateway_id, result)
        except (ValueError, struct.error) as exc:
            self.probes_failed += self.count - 1
            self._limited.log(logging.WARNING, "probe encode", "probe result for %r not "
                              "shared with the other workers: %s", gateway_id, exc)
            return 0
        reached = 0
        for sibling in range(self.count):
            if sibling == self.index:
                continue
            if self._send(sibling, record) is None:
                reached += 1
            else:
                self.probes_failed += 1
        self.probes_out += reached
        return reached

    def _remember_header(self, peer: Endpoint, local: Endpoint) -> bytes | None:
        try:
            header = bytes((_STEERED,)) + _push_endpoint(local) + _push_endpoint(peer)
        except (ValueError, OverflowError):  # a name, not an address; a port over 65535
            self.steer_failed["unencodable"] += 1
            return None
        if len(self._headers) >= _CACHE_LIMIT:
            self._headers.clear()
        self._headers[(id(peer), id(local))] = (peer, local, header)
        return header

    def _send(self, sibling: int, record: bytes) -> str | None:
        """Send one record to ``sibling``: None when sent, else the failure reason."""
        sock = self._out[sibling]
        stale = sock is not None  # a kept connection may be to a sibling since restarted
        if sock is None:
            sock = self._connect(sibling)
        while sock is not None:
            try:
                sock.send(record)
                return None
            except (BlockingIOError, InterruptedError):  # EAGAIN: its queue is full
                return "queue_full"
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    return "queue_full"
                if exc.errno == errno.EMSGSIZE:
                    return "unencodable"
                # EPIPE/ECONNRESET: the sibling went away. A restarted one listens
                # anew under the same name: reconnect once.
                self._disconnect(sibling)
            if not stale:
                break
            stale = False
            sock = self._connect(sibling)
        return "unreachable"

    def _connect(self, sibling: int) -> socket.socket | None:
        if self._closed or self._loop is None:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError):  # best effort: the kernel clamps it
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LINK_BUFFER_BYTES)
            # Synchronous for Unix sockets: done, ECONNREFUSED (nobody listens) or
            # EAGAIN (its backlog is full).
            sock.connect(self._addresses[sibling])
        except OSError:
            sock.close()
            return None
        if not self._is_same_user(sock):  # a stranger squats the name of a dead sibling
            sock.close()
            self.link_refused += 1
            self._limited.log(logging.WARNING, "link squatted", "worker link %r is held "
                              "by a process of another user: not steering to it",
                              self._addresses[sibling][1:])
            return None
        self._out[sibling] = sock
        return sock

    def _disconnect(self, sibling: int) -> None:
        sock = self._out[sibling]
        self._out[sibling] = None
        if sock is not None:
            sock.close()

    def _is_same_user(self, sock: socket.socket) -> bool:
        try:
            _pid, uid, _gid = _PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            )
        except OSError:
            return False
        return bool(uid == self._uid)

    # -- receiving ----------------------------------------------------------------------

    def _accept(self) -> None:
        """Readiness callback of the link listener: admit siblings of our own user."""
        listener, loop = self._listener, self._loop
        if listener is None or loop is None:
            return
        for _ in range(self.count + 16):
            try:
                conn, _address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and kin: pause instead of spinning
                self._limited.log(logging.WARNING, "link accept", "worker link %r: accept "
                                  "failed: %s", self.address[1:], exc)
                loop.remove_reader(listener.fileno())
                self._accept_retry = loop.call_later(_ACCEPT_RETRY_S, self._resume_accept)
                return
            if not self._is_same_user(conn):
                conn.close()
                self.link_refused += 1
                self._limited.log(logging.WARNING, "link refused", "worker link %r: refused "
                                  "a connection from a process of another user",
                                  self.address[1:])
                continue
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LINK_BUFFER_BYTES)
            self._inbound.add(conn)
            loop.add_reader(conn.fileno(), self._read, conn)

    def _resume_accept(self) -> None:
        self._accept_retry = None
        if self._listener is not None and self._loop is not None and not self._closed:
            self._loop.add_reader(self._listener.fileno(), self._accept)

    def _read(self, conn: socket.socket) -> None:
        """Readiness callback of one sibling's connection: a bounded batch of records."""
        recv = conn.recv
        for _ in range(_READ_BATCH):
            try:
                record = recv(_MAX_RECORD + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop_inbound(conn)
                return
            if not record:  # EOF: the sibling closed its link (exit, restart)
                self._drop_inbound(conn)
                return
            self._receive(record)

    def _drop_inbound(self, conn: socket.socket) -> None:
        if conn in self._inbound:
            self._inbound.discard(conn)
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(conn.fileno())
            conn.close()

    def _receive(self, record: bytes) -> None:
        """Decode one record and hand it on; a malformed one is counted and dropped."""
        kind = record[0]
        if kind == _STEERED:
            try:
                peer_at = 4 + record[1]
                end = peer_at + 3 + record[peer_at]
                if end > len(record) or len(record) > _MAX_RECORD:
                    raise ValueError("short record")
                key = record[1:end]
                pair = self._pairs.get(key)
                if pair is None:
                    pair = self._remember_pair(key)
            except (IndexError, ValueError, OSError):  # OSError: inet_pton refused it
                self.link_malformed += 1
                return
            self.steered_in += 1
            assert self._loop is not None
            self._deliver(record[end:], pair[0], pair[1], self._loop.time())
        elif kind == _PROBE:
            try:
                gateway_id, result = _decode_probe(record)
            except (IndexError, ValueError, struct.error):
                self.link_malformed += 1
                return
            self.probes_in += 1
            assert self._loop is not None
            self._probe_result(gateway_id, result, self._loop.time())
        else:
            self.link_malformed += 1

    def _remember_pair(self, key: bytes) -> tuple[Endpoint, Endpoint]:
        local, peer_at = _pull_endpoint(key, 0)
        peer, end = _pull_endpoint(key, peer_at)
        if end != len(key):
            raise ValueError("bad endpoint lengths")
        if len(self._pairs) >= _CACHE_LIMIT:
            self._pairs.clear()
        pair = self._pairs[key] = (peer, local)
        return pair

    # -- shutdown -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop listening and close every link (idempotent); later steers return False."""
        self._closed = True
        loop = self._loop
        live = loop is not None and not loop.is_closed()
        if self._accept_retry is not None:
            self._accept_retry.cancel()
            self._accept_retry = None
        listener, self._listener = self._listener, None
        if listener is not None:
            if live and loop is not None:
                loop.remove_reader(listener.fileno())
            listener.close()
        for conn in list(self._inbound):
            self._drop_inbound(conn)
        for sibling in range(self.count):
            self._disconnect(sibling)


class SteeringSink:
    """A ``MessageSink`` that steers shared-listener datagrams to the worker owning the call.

    The hot path, per received message: one set lookup (the listener), one scan for the
    Call-ID, and, for another worker's call, one ``send`` on its link.

    Args:
        inner: the sink that handles what stays here (the driver).
        links: this worker's links (its ``index`` and ``count`` decide ownership).
        shared: the shared UDP listeners, exactly as the transports report them as
            ``local`` (``Transports.inherited_udp`` after ``start``).

    Attributes:
        shared: the same, a frozenset; replace it after a reload changes listeners.
    """

    def __init__(
        self, inner: MessageSink, links: WorkerLinks, shared: Iterable[Endpoint] = ()
    ) -> None:
        self.inner = inner
        self.links = links
        self.shared: frozenset[Endpoint] = frozenset(shared)
        # Bound once: the hot path saves the attribute lookups.
        self._inner_receive = inner.receive
        self._steer = links.steer
        self._index = links.index
        self._count = links.count

    def receive(self, data: bytes, peer: Endpoint, local: Endpoint, now: float) -> None:
        if local in self.shared:
            owner = owner_of(data, self._count)
            if owner is not None and owner != self._index and self._steer(owner, data, peer, local):
                return
        self._inner_receive(data, peer, local, now)

    def transport_error(self, dest: Endpoint, now: float) -> None:
        self.inner.transport_error(dest, now)

    def is_answerable(self, peer: Endpoint, local: Endpoint, now: float) -> bool:
        return self.inner.is_answerable(peer, local, now)
