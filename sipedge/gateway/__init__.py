"""Sans-I/O gateway pool and health: priority groups, round-robin, OPTIONS probing, hysteresis.

``health`` holds the state machine (one transition table), ``probe`` the typed probe results,
the schedule and the OPTIONS bytes, ``pool`` the groups and the failover order. Nothing here
does I/O or reads a clock; the proxy core drives it with ``now``.
"""

from sipedge.gateway.health import (
    TRANSITIONS,
    ChangeReason,
    GatewayStateChanged,
    Health,
    HealthPolicy,
    HealthRecord,
    Observation,
    ReplyCodes,
    Signal,
    call_observation,
    next_state,
)
from sipedge.gateway.pool import Gateway, GatewayPool, GatewayStatus, gateway_id
from sipedge.gateway.probe import (
    KEEPALIVE_PING,
    KEEPALIVE_PONG,
    ProbeRequest,
    ProbeResult,
    ProbeSchedule,
    ProbeTarget,
    Replied,
    SendFailed,
    TimedOut,
    build_probe,
    parse_healthy_codes,
    probe_observation,
)

__all__ = [
    "KEEPALIVE_PING",
    "KEEPALIVE_PONG",
    "TRANSITIONS",
    "ChangeReason",
    "Gateway",
    "GatewayPool",
    "GatewayStateChanged",
    "GatewayStatus",
    "Health",
    "HealthPolicy",
    "HealthRecord",
    "Observation",
    "ProbeRequest",
    "ProbeResult",
    "ProbeSchedule",
    "ProbeTarget",
    "Replied",
    "ReplyCodes",
    "SendFailed",
    "Signal",
    "TimedOut",
    "build_probe",
    "call_observation",
    "gateway_id",
    "next_state",
    "parse_healthy_codes",
    "probe_observation",
]
