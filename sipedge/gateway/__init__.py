"""Sans-I/O gateway pool and health: priority groups, round-robin, OPTIONS probing, hysteresis.

``health`` holds the state machine (one transition table), ``probe`` the typed probe results,
the schedule and the OPTIONS bytes, ``pool`` the groups and the failover order, ``monitor``
the prober (probe transactions, its own outbox and deadline) that feeds the pool, ``stats``
its counters. Nothing here does I/O or reads a clock; the caller (the proxy core, which
holds the monitor) drives it with ``now``.
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
from sipedge.gateway.monitor import GatewayMonitor, ProbeSend, ProbeSettings
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
from sipedge.gateway.stats import Histogram, ProbeStats

__all__ = [
    "KEEPALIVE_PING",
    "KEEPALIVE_PONG",
    "TRANSITIONS",
    "ChangeReason",
    "Gateway",
    "GatewayMonitor",
    "GatewayPool",
    "GatewayStateChanged",
    "GatewayStatus",
    "Health",
    "HealthPolicy",
    "HealthRecord",
    "Histogram",
    "Observation",
    "ProbeRequest",
    "ProbeResult",
    "ProbeSchedule",
    "ProbeSend",
    "ProbeSettings",
    "ProbeStats",
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
