"""Core events → log lines: one INFO line per call event, rate-limited warnings.

Call started / answered / failed / failed over are INFO; a call's end (its BYE answered)
is DEBUG.

The core reports facts as values (``sipedge.proxy.events``); this is where they become
text. Call events carry structured fields (``extra={"fields": ...}``) that the JSON log
format emits as keys (``call_id``, ``direction``, ``edge``, ``gateway``, ``code``,
``answer_s``); the text format shows them in the message. Floods (drops, rejects from
scanners) go through ``RateLimitedLogger`` so they cost counters, not lines.
"""

from __future__ import annotations

import logging

from sipedge.catalogue import load as load_catalogue
from sipedge.logs import RateLimitedLogger
from sipedge.proxy.events import (
    CallAnswered,
    CallEnded,
    CallFailed,
    CallFailedOver,
    CallStarted,
    DeprecatedParameterSeen,
    Event,
    FailoverReason,
    GatewayStateChanged,
    MediaOutsideRange,
    MessageDropped,
    RequestRejected,
    SourceBanned,
)
from sipedge.proxy.media import MediaIssue

__all__ = ["EventLogger"]

log = logging.getLogger("sipedge")
_WHY = {FailoverReason.TRANSPORT_ERROR: "transport error", FailoverReason.TIMEOUT: "timeout",
        FailoverReason.NO_PROVISIONAL: "no provisional response",
        FailoverReason.RESPONSE: "response"}
calls = logging.getLogger("sipedge.calls")


class EventLogger:
    """Callable the driver hands every core event to."""

    def __init__(self) -> None:
        self.limited = RateLimitedLogger(logging.getLogger("sipedge.events"))
        catalogue = load_catalogue()
        low, high = catalogue.media_ports
        self.media_range = f"{catalogue.media_network}, UDP {low}-{high}"

    def __call__(self, event: Event) -> None:
        if isinstance(event, CallEnded):
            # The four call events an operator follows are INFO; the end of a call is
            # DEBUG: a third line per answered call costs ~7 % of the core's rate.
            if calls.isEnabledFor(logging.DEBUG):
                self._call(event)
        elif isinstance(event, CallStarted | CallAnswered | CallFailed):
            if calls.isEnabledFor(logging.INFO):
                self._call(event)
        elif isinstance(event, CallFailedOver):
            if calls.isEnabledFor(logging.INFO):
                fields: dict[str, object] = {"call_id": event.call_id,
                                             "gateway": event.gateway_id,
                          "reason": event.reason.value, "next": event.next_gateway_id,
                          "edge": event.from_edge, "to_edge": event.to_edge}
                if event.code:
                    fields["code"] = event.code
                why = f"{event.code} response" if event.code else _WHY[event.reason]
                calls.info("call %s failed on %s (%s); next: %s", event.call_id,
                           event.gateway_id, why, event.next_gateway_id or "none",
                           extra={"fields": fields})
        elif isinstance(event, GatewayStateChanged):
            log.warning("gateway %s %s -> %s: %s", event.gateway_id, event.old.name,
                        event.new.name, event.reason,
                        extra={"fields": {"gateway": event.gateway_id,
                                          "state": event.new.value,
                                          "cause": event.cause.value}})
        elif isinstance(event, RequestRejected):
            self.limited.log(logging.INFO, f"rejected:{event.status}",
                             "answered %d to %s: %s", event.status, event.peer, event.reason)
        elif isinstance(event, MessageDropped):
            detail = f" ({event.detail})" if event.detail else ""
            self.limited.log(logging.INFO, f"dropped:{event.reason.value}",
                             "dropped message from %s: %s%s", event.peer,
                             event.reason.value.replace("_", " "), detail)
        elif isinstance(event, SourceBanned):
            self.limited.log(logging.WARNING, "banned",
                             "source %s exceeded its message rate ([limits] source_rate_per_s):"
                             " dropped for %g s", event.peer.host, event.ban_s)
        elif isinstance(event, MediaOutsideRange):
            what = "media address" if event.issue is MediaIssue.ADDRESS else "media port"
            self.limited.log(logging.WARNING, f"media:{event.issue.value}",
                             "call %s: SDP from %s has %s %s outside Twilio's Interconnect "
                             "media range (%s): is its media on the public path, or is the "
                             "range stale?", event.call_id, event.peer, what, event.value,
                             self.media_range)
        elif isinstance(event, DeprecatedParameterSeen):
            self.limited.log(logging.WARNING, "tnx",
                             "request from %s uses the deprecated tnx=%s URI parameter; "
                             "use edge= instead", event.peer, event.value)

    @staticmethod
    def _call(event: CallStarted | CallAnswered | CallFailed | CallEnded) -> None:
        if isinstance(event, CallEnded):
            how = f"BYE {event.code}" if event.code else "idle expiry"
            calls.debug("call %s ended (%s)", event.call_id, how,
                       extra={"fields": {"call_id": event.call_id, "event": "ended",
                                         "code": event.code}})
            return
        fields: dict[str, object] = {"call_id": event.call_id, "direction": event.direction,
                                     "edge": event.edge or None, "gateway": event.gateway}
        if isinstance(event, CallStarted):
            fields["event"] = "started"
            calls.info("call %s started %s via %s (%s)", event.call_id, event.direction,
                       event.edge or "-", event.gateway or "-", extra={"fields": fields})
        elif isinstance(event, CallAnswered):
            fields.update(event="answered", code=200, answer_s=round(event.answer_s, 3))
            calls.info("call %s answered via %s in %.3f s", event.call_id,
                       event.gateway or "-", event.answer_s, extra={"fields": fields})
        else:
            fields.update(event="failed", code=event.code, answer_s=round(event.elapsed_s, 3))
            calls.info("call %s failed %d via %s after %.3f s", event.call_id, event.code,
                       event.gateway or "-", event.elapsed_s, extra={"fields": fields})
