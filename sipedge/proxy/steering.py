"""Which worker process owns a message: Call-ID steering for a shared UDP listener.

Theory of operation (issue 14): N workers share each configured listener. The kernel
spreads datagrams over the sockets of a ``SO_REUSEPORT`` group by the sender's address,
which keeps a PBX trunk (one address) on one worker and would split nothing; and a
transaction or call must be handled by the worker that holds its state. So the shell of
whichever worker receives a datagram on a shared listener asks :func:`owner_of` and hands
the datagram to the owning worker, unparsed. The owner is ``crc32(Call-ID) % count``: every
message of a call (INVITE, its CANCEL and ACK, the BYE, their retransmissions) carries the
same Call-ID, so it reaches the same worker, and hashing spreads calls evenly. Responses and
in-dialog requests normally come straight to a worker's own endpoint (its Via and
Record-Route name it), so steering is for the new requests from the PBX and from Twilio.

The hash is ``zlib.crc32`` and not ``hash()``: ``hash(bytes)`` is salted per process
(PYTHONHASHSEED), so two workers would disagree about the owner. A message without a
Call-ID has no owner: the receiving worker handles it, and its core answers the 400 such a
request gets (or drops a response).
"""

from __future__ import annotations

import zlib

from sipedge.sip.message import call_id_of

__all__ = ["owner_of"]


def owner_of(data: bytes, count: int) -> int | None:
    """The index (0 .. count-1) of the worker that owns the call of raw message ``data``.

    Args:
        data: one datagram or framed stream message, not parsed
            (:func:`sipedge.sip.message.call_id_of` finds its Call-ID).
        count: the number of workers, at least 1.

    Returns:
        ``zlib.crc32(call_id) % count``, the same in every process and run; None when
        ``data`` has no Call-ID header (handle it locally).
    """
    call_id = call_id_of(data)
    if call_id is None:
        return None
    return zlib.crc32(call_id) % count
