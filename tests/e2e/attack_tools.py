"""Tools the attack tests (``test_attacks.py``) and ``bench/attacks.py`` share.

* :class:`Capture`: a packet capture on the loopback interface without tcpdump/tshark
  (an ``AF_PACKET`` socket with a classic BPF filter on the destination network, read by a
  thread): what sipedge really put on the wire, whoever was (or was not) listening.
* :class:`RawClient`: a PBX-side (or stranger) UA that sends hand-made bytes over UDP or
  TCP and collects the responses, for the malformed classes SIPp cannot send.
* :func:`request`: a well-formed request to mutate, and small helpers over ``/proc``.

Loopback only: every address here is in 127.0.0.0/8.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import re
import select
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Capture", "Packet", "RawClient", "fd_count", "request", "rss_kib", "statuses"]

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4


@dataclass(frozen=True, slots=True)
class Packet:
    """One IPv4 UDP or TCP packet seen on ``lo`` (TCP: any segment, ``payload`` may be empty)."""

    proto: str  # "udp" | "tcp"
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes
    tcp_flags: int = 0


def _bpf_dst_net(net: ipaddress.IPv4Network) -> bytes:
    """``struct sock_filter[]``: accept IPv4 frames whose destination is in ``net``."""
    mask, addr = int(net.netmask), int(net.network_address)
    prog = [
        (0x28, 0, 0, 12),  # ldh [12]           ethertype
        (0x15, 0, 4, 0x0800),  # jeq IPv4 ? next : drop
        (0x20, 0, 0, 30),  # ld [30]            destination address
        (0x54, 0, 0, mask),  # and #mask
        (0x15, 0, 1, addr),  # jeq #net ? accept : drop
        (0x06, 0, 0, 0xFFFF),  # ret accept (65535 bytes)
        (0x06, 0, 0, 0),  # ret drop
    ]
    return b"".join(struct.pack("HBBI", *ins) for ins in prog)


class Capture:
    """Every UDP/TCP packet to ``dst_net`` on the loopback interface, from start() to stop().

    Root (CAP_NET_RAW) is needed; :meth:`available` says whether this machine allows it.
    Each packet crosses ``lo`` twice (out and in); only the inbound copy is kept.
    """

    def __init__(self, dst_net: str) -> None:
        self.net = ipaddress.IPv4Network(dst_net)
        self.packets: list[Packet] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._filter = ctypes.create_string_buffer(_bpf_dst_net(self.net))
        fprog = struct.pack("HL", len(self._filter.raw) // 8, ctypes.addressof(self._filter))
        self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self._sock.bind(("lo", 0))
        # Frames that arrived before the filter was attached: drop them.
        self._sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self._sock.recv(65535)
        self._thread = threading.Thread(target=self._run, name=f"capture {dst_net}",
                                        daemon=True)

    @staticmethod
    def available() -> bool:
        try:
            socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)).close()
        except (PermissionError, OSError):
            return False
        return True

    def __enter__(self) -> Capture:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        time.sleep(0.1)  # what is in flight now is in the socket's queue a moment later
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        self._sock.close()

    def _run(self) -> None:
        sock = self._sock
        while not self._stop.is_set():
            ready, _, _ = select.select([sock], [], [], 0.05)
            if not ready:
                continue
            with contextlib.suppress(BlockingIOError):
                while True:
                    frame, addr = sock.recvfrom(65535)
                    if addr[2] == PACKET_OUTGOING:
                        continue
                    packet = _decode(frame[14:])
                    if packet is not None:
                        with self._lock:
                            self.packets.append(packet)

    def seen(self) -> list[Packet]:
        with self._lock:
            return list(self.packets)


def _decode(ip: bytes) -> Packet | None:
    if len(ip) < 20 or ip[0] >> 4 != 4:
        return None
    ihl = (ip[0] & 0x0F) * 4
    proto = ip[9]
    src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    body = ip[ihl:]
    if proto == 17 and len(body) >= 8:
        sport, dport = struct.unpack("!HH", body[:4])
        return Packet("udp", src, sport, dst, dport, body[8:])
    if proto == 6 and len(body) >= 20:
        sport, dport = struct.unpack("!HH", body[:4])
        offset = (body[12] >> 4) * 4
        return Packet("tcp", src, sport, dst, dport, body[offset:], body[13])
    return None


# -- hand-made SIP ---------------------------------------------------------------------------


def request(method: str = "OPTIONS", *, transport: str = "UDP", via: bytes | None = None,
            host: str = "127.0.0.1", port: int = 5060,
            ruri: bytes = b"sip:+14155550100@example.com", call_id: bytes | None = None,
            branch: bytes | None = None, max_forwards: bytes = b"70",
            extra: tuple[bytes, ...] = (), body: bytes = b"",
            content_length: bytes | None = None, drop: tuple[bytes, ...] = ()) -> bytes:
    """A well-formed request (to mutate): Via sent-by ``host:port`` with rport.

    ``drop`` removes headers by name; ``extra`` adds header lines before Content-Length.
    """
    call_id = call_id or b"atk-" + uuid.uuid4().hex.encode()
    branch = branch or b"z9hG4bK-atk-" + uuid.uuid4().hex.encode()
    top_via = via or b"SIP/2.0/%s %s:%d;branch=%s;rport" % (
        transport.encode(), host.encode(), port, branch)
    headers = [
        (b"Via", top_via),
        (b"Max-Forwards", max_forwards),
        (b"From", b"<sip:pbx@127.0.0.1>;tag=atk1"),
        (b"To", b"<sip:+14155550100@example.com>"),
        (b"Call-ID", call_id),
        (b"CSeq", b"1 " + method.encode()),
        (b"Contact", b"<sip:pbx@%s:%d>" % (host.encode(), port)),
    ]
    lines = [method.encode() + b" " + ruri + b" SIP/2.0"]
    lines += [name + b": " + value for name, value in headers if name not in drop]
    lines += list(extra)
    length = content_length if content_length is not None else str(len(body)).encode()
    lines.append(b"Content-Length: " + length)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


_STATUS = re.compile(rb"^SIP/2\.0 (\d{3}) ", re.M)


def statuses(data: bytes) -> list[int]:
    """Status codes of the responses found in ``data`` (each starts a line)."""
    return [int(m.group(1)) for m in _STATUS.finditer(data)]


class RawClient:
    """A UA that sends raw bytes to ``target`` from ``host`` over UDP or TCP.

    Attributes:
        port: the local port (the Via sent-by port to use).
        closed: (TCP) the server closed the connection.
    """

    def __init__(self, transport: str, target: tuple[str, int], *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.transport = transport.upper()
        self.target = target
        self.closed = False
        self.data: list[bytes] = []  # datagrams (UDP) or one growing buffer's reads (TCP)
        if self.transport == "UDP":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((host, port))
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.bind((host, port))
            self.sock.connect(target)
        self.port = int(self.sock.getsockname()[1])

    def send(self, data: bytes) -> None:
        if self.transport == "UDP":
            self.sock.sendto(data, self.target)
        else:
            self.sock.sendall(data)

    def read(self, timeout: float, *, until: int = 0) -> bytes:
        """Collect for up to ``timeout`` s, or until ``until`` final responses arrived."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0 or (until and sum(s >= 200 for s in statuses(self.received)) >= until):
                break
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                break
            try:
                chunk = self.sock.recv(70000)
            except (ConnectionResetError, ConnectionRefusedError):
                self.closed = self.transport == "TCP"
                break
            if not chunk and self.transport == "TCP":
                self.closed = True
                break
            self.data.append(chunk)
        return self.received

    @property
    def received(self) -> bytes:
        return b"".join(self.data)

    def close(self) -> None:
        self.sock.close()


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (``/proc/PID/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    """Open file descriptors of ``pid`` (``/proc/PID/fd``)."""
    return len(os.listdir(f"/proc/{pid}/fd"))
