"""Operator-visible facts the core reports through ``drain_events()``, and their reasons.

The core does not log them (house rule 6): the shell logs each one, rate-limited, and
counts it. Names are past-tense nouns. Every reason that control flow or a metric label
depends on is an enum here, never a string compared in code; free text (``detail``) is
only ever for the log line.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sipedge.gateway.health import ChangeReason, GatewayStateChanged
from sipedge.proxy.media import MediaIssue
from sipedge.sip.address import Endpoint

__all__ = [
    "CallAnswered",
    "CallEnded",
    "CallFailed",
    "CallFailedOver",
    "CallStarted",
    "ChangeReason",
    "DeprecatedParameterSeen",
    "DropReason",
    "Event",
    "FailoverReason",
    "GatewayStateChanged",
    "MediaOutsideRange",
    "MessageDropped",
    "RequestRejected",
    "SourceBanned",
]


class FailoverReason(enum.Enum):
    """Why a call attempt left a gateway (RFC 3261 §16.6 / house rule 8)."""

    __hash__ = object.__hash__  # identity hashing: these key hot-path counters

    TRANSPORT_ERROR = "transport_error"  # refused, reset, ICMP unreachable, TLS failure
    TIMEOUT = "timeout"  # the client transaction timed out (Timer B/F)
    NO_PROVISIONAL = "no_provisional"  # no 1xx within no_provisional_timeout_s
    RESPONSE = "response"  # a final response in failover_codes (408/5xx)


class DropReason(enum.Enum):
    """Why a message was dropped without an answer."""

    __hash__ = object.__hash__

    SOURCE_NOT_ALLOWED = "source_not_allowed"  # neither inside.allow, the PBX nor a gateway
    TOO_LARGE = "too_large"  # above max_message_bytes
    UNPARSEABLE = "unparseable"  # a response, or garbage with no status to answer
    UNANSWERABLE = "unanswerable"  # a bad request without the headers a reply copies
    UNEXPECTED_RESPONDER = "unexpected_responder"  # a response from another address
    STRAY_RESPONSE = "stray_response"  # a response no transaction knows
    ACK_UNROUTABLE = "ack_unroutable"  # an ACK for 2xx with nowhere to go
    RATE_LIMITED = "rate_limited"  # an inside source over its rate: its ban starts
    BANNED = "banned"  # from a source serving a ban (dropped before parsing)
    WRONG_SIDE = "wrong_side"  # an inside source on the outside socket, or vice versa


@dataclass(frozen=True, slots=True)
class RequestRejected:
    """A request was answered with an error status by sipedge itself."""

    peer: Endpoint
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class MessageDropped:
    """A message was dropped without an answer."""

    peer: Endpoint
    reason: DropReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CallStarted:
    """An initial INVITE was accepted and sent on (``edge`` of the first attempt)."""

    call_id: str
    direction: str  # "outbound" (PBX → Twilio) or "inbound" (Twilio → PBX)
    edge: str
    gateway: str


@dataclass(frozen=True, slots=True)
class CallAnswered:
    """A 2xx to an initial INVITE went upstream."""

    call_id: str
    direction: str
    edge: str
    gateway: str
    answer_s: float  # INVITE received → 2xx relayed


@dataclass(frozen=True, slots=True)
class CallFailed:
    """A non-2xx final response to an initial INVITE went upstream (relayed or ours)."""

    call_id: str
    direction: str
    edge: str
    gateway: str
    code: int
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The BYE of an answered call got its final response (or the call idled out)."""

    call_id: str
    code: int  # the BYE's final status; 0 for an idle expiry


@dataclass(frozen=True, slots=True)
class CallFailedOver:
    """A call attempt failed on one gateway; sipedge moved it to the next (or gave up)."""

    call_id: str
    gateway_id: str
    reason: FailoverReason
    next_gateway_id: str | None
    from_edge: str = ""
    to_edge: str = ""  # "" when no gateway was left
    code: int = 0  # the final status for RESPONSE


@dataclass(frozen=True, slots=True)
class SourceBanned:
    """An inside source went over its message rate and is dropped for ``ban_s``."""

    peer: Endpoint
    ban_s: float


@dataclass(frozen=True, slots=True)
class MediaOutsideRange:
    """An SDP from Twilio names media outside Twilio's Interconnect media range."""

    call_id: str
    peer: Endpoint
    issue: MediaIssue
    value: str


@dataclass(frozen=True, slots=True)
class DeprecatedParameterSeen:
    """A request from Twilio carried the deprecated ``tnx`` URI parameter."""

    peer: Endpoint
    value: str


Event = (
    RequestRejected | MessageDropped | CallFailedOver | DeprecatedParameterSeen
    | GatewayStateChanged | CallStarted | CallAnswered | CallFailed | CallEnded
    | MediaOutsideRange | SourceBanned
)
