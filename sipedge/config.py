"""Configuration: one TOML file → one frozen ``Config``, validated once (house rule 10).

Theory of operation: :func:`load_config` is a pure function of the file (plus the
shipped Twilio catalogue and, for TLS, the existence of the named files). It either
returns a complete, immutable :class:`Config` or raises :class:`ConfigError` naming the
file, the key (``edges[1].gateways[0]``) and the reason, so ``sipedge check`` and
``sipedge run`` share one loader and a reload can swap the whole value atomically.
Nothing here logs: facts worth telling the operator that are not errors (a legacy
edge id normalised, a public Twilio target allowed) are collected in
``Config.warnings`` for the caller to log once and for :func:`summary` to print.

The file format is a public interface (issues 3 and 4); every key, its default and
its meaning are shown in ``conf/sipedge.toml``. Unknown keys are refused at every
level, because a misspelt key silently falling back to a default is how a proxy ends
up sending calls somewhere nobody intended.

One source per key (issue 11): a table's dataclass *is* its schema. The allowed keys,
their TOML spelling, which are required and their defaults all come from the fields
(:func:`section_keys`, :data:`SECTIONS`); the loader only adds, per field, the parser
that validates its value (``_Table.build``), and refuses to load a table one of whose
fields has no parser. A new key is: a field with its default and docstring, its parser
in the section's method, its line in ``conf/sipedge.toml`` (a test compares the file
with the dataclasses) and, when the core needs it, :func:`build_settings`.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    Literal,
    TypeVar,
    get_args,
    get_origin,
    get_type_hints,
)

from sipedge.catalogue import CatalogueError, EdgeMatch
from sipedge.catalogue import load as load_catalogue
from sipedge.logs import LOG_FORMATS, LogFormat
from sipedge.proxy.admission import AdmissionLimits
from sipedge.proxy.media import MediaRange
from sipedge.proxy.settings import ProxySettings, RejectUnknown, WorkerPlace
from sipedge.sip.address import TRANSPORTS, Endpoint, default_port
from sipedge.sip.message import MAX_BRANCH_BYTES, MAX_HEADERS, MAX_LINE_BYTES, MAX_VIA, Limits
from sipedge.sip.timers import Timers
from sipedge.transport.base import StreamSettings

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "SECTIONS",
    "AdminConfig",
    "Config",
    "ConfigError",
    "DaemonConfig",
    "EdgeConfig",
    "FailoverConfig",
    "GatewayConfig",
    "InboundConfig",
    "InsideConfig",
    "LimitsConfig",
    "LogConfig",
    "OutsideConfig",
    "ProbeConfig",
    "ProcessConfig",
    "TlsConfig",
    "auto_workers",
    "build_settings",
    "build_stream_settings",
    "load_config",
    "parse_config",
    "section_keys",
    "summary",
    "worker_endpoints",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
RejectPolicy = Literal["drop", "403"]
_T = TypeVar("_T")
_S = TypeVar("_S", bound="DataclassInstance")

_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
# Twilio asks for at most one OPTIONS ping per 10–15 s per gateway (interconnect facts).
_TWILIO_MIN_PROBE_INTERVAL_S = 10.0
#: [process] bounds: more workers than this is a typo, not a machine; a stride above
#: 30000 leaves no room for even one worker above the default SIP ports.
_MAX_WORKERS = 64
_MAX_PORT_STRIDE = 30000
#: Worker endpoints that would bind the same port: UDP is one port space, TCP and TLS
#: (TLS runs over TCP) the other.
_PORT_SPACE: Mapping[str, str] = MappingProxyType({"udp": "udp", "tcp": "tcp", "tls": "tcp"})


_STREAM = StreamSettings()

class ConfigError(Exception):
    """The one error of the config layer: ``FILE: key: reason``.

    Attributes:
        path: the config file as given.
        key: dotted key path (``inside.listen[1]``), or ``(file)`` for the file itself.
        reason: what is wrong, for the operator.
    """

    def __init__(self, path: str, key: str, reason: str) -> None:
        super().__init__(path, key, reason)
        self.path = path
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.key}: {self.reason}"


# ----------------------------------------------------------------------------------------
# The Config tree
#
# Each section's dataclass is the one description of its TOML table: a field is a key of
# the same name, the field's default is the key's default, and a field without a default
# is a required key (section_keys() reads this; the loader, `sipedge check` and the tests
# all go through it). Field metadata marks where a field and a key differ:
#   {"key": False}           derived while loading, not a key of the file;
#   {"key": "other_name"}    the key is spelt differently from the field;
#   {"also": ("weights",)}   further keys that feed this field.
# `Timers` belongs to the sans-I/O core, which must not learn TOML names (house.md §1), so
# its keys follow one rule kept here instead of metadata there: the unit is in the key's
# name (house.md §2), field t1 is key t1_s.

_UNIT_SUFFIX: Mapping[type, str] = MappingProxyType({Timers: "_s"})


@dataclass(frozen=True, slots=True, kw_only=True)
class InsideConfig:
    """``[inside]``: the side facing the PBX.

    Attributes:
        listen: sockets the PBX sends to.
        allow: source networks allowed to place calls towards Twilio (empty: nobody).
        pbx: where calls from Twilio are sent (host may be a name, resolved later).
    """

    listen: tuple[Endpoint, ...]
    allow: tuple[IPNetwork, ...] = ()
    pbx: Endpoint


@dataclass(frozen=True, slots=True, kw_only=True)
class OutsideConfig:
    """``[outside]``: the side facing Twilio over the private link.

    Attributes:
        listen: sockets Twilio's gateways send to and calls/probes leave from.
        domain: the unique part of ``<domain>.sip.twilio.com`` (one DNS label).
        allow_public: permit public (non-Interconnect) Twilio host names as gateways.
        user_agent: the User-Agent of the OPTIONS probes sipedge sends; empty (the
            default) sends none: a product or version string only helps an attacker.
    """

    listen: tuple[Endpoint, ...]
    domain: str
    allow_public: bool = False
    user_agent: str = ""


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """One gateway of an edge (an item of ``edges[].gateways``, not a table).

    Attributes:
        host: IP literal (IPv6 without brackets) or a DNS name (RFC 3263, resolved later).
        port: the port given, or ``None`` (an IP uses the transport's default port; a
            name is looked up with SRV first, RFC 3263 §4.2).
        transport: the edge's transport.
        weight: relative share of calls within the edge (round-robin weight); the
            default of ``edges[].weights``.
    """

    host: str
    port: int | None
    transport: str
    weight: int = 1

    @property
    def is_ip(self) -> bool:
        """True when ``host`` is an IP literal (no DNS needed)."""
        return _is_ip(self.host)

    @property
    def endpoint(self) -> Endpoint:
        """Where to send, with the default port filled in (5060, or 5061 for TLS)."""
        return Endpoint(self.transport, self.host, self.port or default_port(self.transport))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.port is not None else host


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeConfig:
    """One ``[[edges]]`` entry: a priority group of gateways, tried in file order.

    Attributes:
        name: canonical Interconnect edge name (``ashburn-ix``), legacy ids normalised.
        region: the gateways' region (``Virginia``), from the catalogue.
        transport: ``udp``, ``tcp`` or ``tls``.
        gateways: the group, weighted by the ``weights`` key; the catalogue's addresses
            when the file gives none (so the key has no dataclass default).
        localized_domain: the Request-URI host for calls through this edge,
            ``{domain}.sip.{edge}.twilio.com``; also the TLS server name (SNI).
        from_catalogue: True when ``gateways`` came from the catalogue.
    """

    name: str
    region: str = field(metadata={"key": False})
    transport: str = "udp"
    gateways: tuple[GatewayConfig, ...] = field(metadata={"also": ("weights",)})
    localized_domain: str = field(metadata={"key": False})
    from_catalogue: bool = field(metadata={"key": False})


@dataclass(frozen=True, slots=True)
class InboundConfig:
    """``[inbound]``: calls from Twilio, and strangers on either side.

    Attributes:
        strip_edge_params: remove ``edge``/``tnx`` Request-URI parameters before the PBX.
        reject_unknown: a request from an unknown source is dropped silently or
            answered 403.
        check_media: read the SDP of INVITEs and answers from Twilio and warn (and count)
            when its media is outside Twilio's Interconnect media range.
    """

    strip_edge_params: bool = False
    reject_unknown: RejectPolicy = "drop"
    check_media: bool = True


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """``[tls]``: absolute paths (relative ones are resolved against the config file).

    Attributes:
        cafile: CA bundle TLS peers are verified against (required when TLS is used).
        certfile: our certificate chain (required to listen on TLS).
        keyfile: its key, unless inside ``certfile``.
    """

    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """``[probe]``: OPTIONS health probing per gateway (Kamailio ``ds_ping_*`` analogue).

    Attributes:
        interval_up_s: probe interval while a gateway is up.
        interval_down_s: probe interval while it is down or probing.
        timeout_s: a probe with no final reply after this long failed.
        down_after: consecutive failures before UP → DOWN.
        up_after: consecutive successes before DOWN → UP.
        healthy_codes: reply codes that count as alive (``"2xx"`` expanded).
        jitter_fraction: each interval is randomised by ± this fraction so probes of
            many gateways do not synchronise.
        retry_after_max_s: cap on how long a 503 Retry-After may keep a gateway down.
    """

    interval_up_s: float = 15.0
    interval_down_s: float = 5.0
    timeout_s: float = 2.0
    down_after: int = 3
    up_after: int = 2
    healthy_codes: frozenset[int] = frozenset(range(200, 300))
    jitter_fraction: float = 0.1
    retry_after_max_s: float = 300.0


@dataclass(frozen=True, slots=True)
class FailoverConfig:
    """``[failover]``: when a call moves to the next gateway.

    Attributes:
        no_provisional_timeout_s: no 1xx within this long → next gateway.
        codes: final responses that trigger failover (never 1xx/2xx).
    """

    no_provisional_timeout_s: float = 4.0
    codes: frozenset[int] = frozenset({408, 500, 503, 504})


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """``[admin]``: the HTTP admin/metrics listener.

    Attributes:
        listen: ``tcp`` endpoint to serve on, or ``None`` (off).
    """

    listen: Endpoint | None = None


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``.

    Attributes:
        level: ``debug``, ``info``, ``warning``, ``error`` or ``critical``.
        format: ``text`` (one line per record) or ``json`` (one object per line);
            ``sipedge run --log-format`` overrides it.
    """

    level: str = "info"
    format: LogFormat = "text"


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """``[daemon]``: the process around the proxy.

    Attributes:
        drain_timeout_s: on SIGTERM, how long calls in progress may take to end before
            the daemon exits anyway.
    """

    drain_timeout_s: float = 30.0


def auto_workers() -> int:
    """``workers = "auto"``: one worker per CPU this process may run on (at least 1).

    The CPUs of the affinity mask when the platform has one (a systemd ``CPUAffinity=`` or
    a container's cpuset gives fewer than ``os.cpu_count()``), capped at the 64 workers
    the key allows.
    """
    # No affinity mask on macOS or Windows: every CPU counts.
    cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1)
    return min(max(1, cpus), _MAX_WORKERS)


@dataclass(frozen=True, slots=True)
class ProcessConfig:
    """``[process]``: worker processes sharing the listeners (issue 14).

    With ``workers`` > 1 the daemon's parent binds every listener once and starts that many
    workers, which share them. Besides, worker ``i`` (0-based) owns an endpoint of its own
    for every listener: same transport and host, port ``listener port + port_stride × (i +
    1)``. It sends what it forwards from there and names it in Via and Record-Route, so
    responses and in-dialog requests come back to the worker holding the transaction;
    requests arriving on a shared listener are handed to the worker that owns their
    Call-ID. Each worker's admission limits are the ``[limits]`` divided among the workers
    (``build_settings``). Worker 0 alone probes the gateways and shares the results.

    Attributes:
        workers: how many worker processes; ``"auto"`` in the file is one per CPU
            (:func:`auto_workers`). 1 (the default) runs one process, as before.
        port_stride: the distance between a listener's port and worker 0's own port for
            it, and between consecutive workers' ports.
    """

    workers: int = 1
    port_stride: int = 100


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """``[limits]``: admission control (``sipedge.proxy.admission`` explains each rule).

    The values are for the whole proxy. With ``[process] workers`` > 1 each worker gets its
    share (``build_settings``): the rates divided by the workers, the bursts and
    ``max_transactions`` divided and rounded up, every one at least 1 (0 stays "off").
    ``max_sources``, ``ban_s`` and ``emergency_numbers`` are per worker as written: every
    worker sees every source.

    Attributes:
        source_rate_per_s: sustained messages/s from one inside source IP before a ban
            (a busy PBX trunk at 200 calls/s sends ~1,000/s).
        source_burst: messages above that rate a source may send at once.
        ban_s: how long a source over its rate is dropped.
        call_rate_per_s: new initial INVITEs/s for the whole proxy; beyond, 503 with
            Retry-After. 0 turns the cap off.
        call_burst: burst of that cap.
        gateway_calls_per_s: new calls/s per Twilio gateway IP (Twilio's documented
            Interconnect limit is 30); a gateway at its cap is skipped for the next one.
            0 turns it off.
        emergency_numbers: Request-URI user parts that bypass the call caps.
        max_sources: per-source table size (bounded memory under spoofed floods).
        max_transactions: server transactions in progress; beyond, new requests get 503.
        tcp_max_connections: open TCP/TLS connections in all (inbound + outbound).
        tcp_max_connections_per_ip: inbound TCP/TLS connections from one address.
        tcp_first_byte_timeout_s: an accepted connection that sends nothing is closed.
        tcp_message_timeout_s: a message begun must be complete within this (slowloris).
        tcp_max_message_bytes: a larger stream message is answered 513 and the
            connection closed.
        tcp_idle_timeout_s: a connection with no traffic for this long is closed.
        max_headers: header lines in one message (folded lines count).
        max_header_line_bytes: bytes in one header line (and the Request-URI: 414).
        max_via: Via values in one message (70: the most a Max-Forwards-70 path makes).
        max_branch_bytes: bytes in the top Via's branch parameter.
    """

    source_rate_per_s: float = 2000.0
    source_burst: float = 4000.0
    ban_s: float = 30.0
    call_rate_per_s: float = 1000.0
    call_burst: float = 2000.0
    gateway_calls_per_s: float = 30.0
    emergency_numbers: tuple[str, ...] = ("911", "933", "112", "999")
    max_sources: int = 10000
    max_transactions: int = 100000
    # The stream transport's own defaults (transport.base.StreamSettings, where each one
    # is explained) are the one source of these.
    tcp_max_connections: int = _STREAM.max_connections
    tcp_max_connections_per_ip: int = _STREAM.max_connections_per_ip
    tcp_first_byte_timeout_s: float = _STREAM.first_byte_timeout_s
    tcp_message_timeout_s: float = _STREAM.message_timeout_s
    tcp_max_message_bytes: int = _STREAM.max_message
    tcp_idle_timeout_s: float = _STREAM.idle_timeout_s
    # The parser's limits (sip.message, where each default is explained): past one a
    # request is answered 513 and the work stops at the limit.
    max_headers: int = MAX_HEADERS
    max_header_line_bytes: int = MAX_LINE_BYTES
    max_via: int = MAX_VIA
    max_branch_bytes: int = MAX_BRANCH_BYTES


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; swap it whole on reload.

    Attributes:
        path: the file it was read from.
        inside: ``[inside]``.
        outside: ``[outside]``.
        edges: ``[[edges]]`` in priority order.
        inbound: ``[inbound]``.
        tls: ``[tls]`` (all ``None`` when absent).
        timers: ``[timers]`` as the transaction layer's ``Timers``.
        probe: ``[probe]``.
        failover: ``[failover]``.
        admin: ``[admin]``.
        log: ``[log]``.
        daemon: ``[daemon]``.
        limits: ``[limits]``.
        process: ``[process]``.
        warnings: ``key: text`` lines worth logging once (not errors).
    """

    path: str = field(metadata={"key": False})
    inside: InsideConfig
    outside: OutsideConfig
    edges: tuple[EdgeConfig, ...]
    inbound: InboundConfig = field(default_factory=InboundConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    timers: Timers = field(default_factory=Timers)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    failover: FailoverConfig = field(default_factory=FailoverConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    log: LogConfig = field(default_factory=LogConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    warnings: tuple[str, ...] = field(default=(), metadata={"key": False})

    @property
    def listen(self) -> tuple[Endpoint, ...]:
        """Every socket to bind, inside first, duplicates (a shared socket) once."""
        return tuple(dict.fromkeys(self.inside.listen + self.outside.listen))

    @property
    def uses_tls(self) -> bool:
        """True when any listener, edge or the PBX uses TLS."""
        return (
            any(e.transport == "tls" for e in self.listen)
            or any(e.transport == "tls" for e in self.edges)
            or self.inside.pbx.transport == "tls"
        )

    def sni_map(self) -> dict[Endpoint, str]:
        """Gateway endpoint → localized domain, for the transports' ``sni_for``."""
        return {gw.endpoint: e.localized_domain for e in self.edges for gw in e.gateways}


@cache
def section_keys(cls: type[DataclassInstance]) -> Mapping[str, str]:
    """The TOML keys of a table, each mapped to the field it feeds, in field order.

    Args:
        cls: the table's dataclass: ``Config`` for the top level, a section's
            (``ProbeConfig``, ``Timers``, ``EdgeConfig`` for an ``[[edges]]`` entry).

    Returns:
        ``{toml_key: field_name}``; derived fields (``{"key": False}``) are left out.
    """
    keys: dict[str, str] = {}
    for f in fields(cls):
        key = f.metadata.get("key", f.name + _UNIT_SUFFIX.get(cls, ""))
        if key is False:
            continue
        keys[key] = f.name
        for extra in f.metadata.get("also", ()):
            keys[extra] = f.name
    return MappingProxyType(keys)


def _section_types() -> Mapping[str, type[DataclassInstance]]:
    hints = get_type_hints(Config)
    out: dict[str, type[DataclassInstance]] = {}
    for key, name in section_keys(Config).items():
        hint = hints[name]
        if get_origin(hint) is tuple:  # [[edges]]: an array of tables
            hint = get_args(hint)[0]
        out[key] = hint
    return MappingProxyType(out)


#: Top-level table name → the dataclass describing it (``"edges"`` → one entry's).
SECTIONS: Mapping[str, type[DataclassInstance]] = _section_types()


def _default(cls: type[DataclassInstance], name: str) -> Any:
    """The dataclass default of field ``name``, or ``MISSING`` (a required key)."""
    f = _fields_of(cls)[name]
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


@cache
def _fields_of(cls: type[DataclassInstance]) -> Mapping[str, Field[Any]]:
    return MappingProxyType({f.name: f for f in fields(cls)})


# ----------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path) -> Config:
    """Read and validate a config file.

    Args:
        path: the TOML file; relative TLS paths inside it are resolved against its
            directory.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: unreadable file, invalid TOML, or any invalid key.
    """
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(name, "(file)", f"cannot read: {exc}") from exc
    return parse_config(text, name, base_dir=Path(path).parent)


def parse_config(text: str, path: str = "<config>", *, base_dir: Path | None = None) -> Config:
    """Validate config text (the pure core of :func:`load_config`; tests use it).

    Args:
        text: TOML text.
        path: the name errors carry.
        base_dir: what relative TLS paths are relative to (default: the current directory).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: invalid TOML or any invalid key.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "(syntax)", str(exc)) from exc
    return _Loader(path, base_dir or Path.cwd()).build(doc)


#: A value parser: ``(value from TOML, dotted key for errors) -> typed value``.
_Parse = Callable[[Any, str], _T]


class _Table(Generic[_S]):
    """One TOML table read against the dataclass that describes it.

    The keys allowed, their TOML spelling and their defaults all come from the fields
    of ``cls`` (:func:`section_keys`); a value parser runs only for a key the file sets.
    Every key field must be read exactly through :meth:`get` (or :meth:`build`):
    :meth:`done` checks that, because a field no code reads would be a key the file may
    set and the proxy silently ignores, the very thing refusing unknown keys prevents.
    """

    def __init__(self, loader: _Loader, raw: Any, where: str, cls: type[_S]) -> None:
        if not isinstance(raw, dict):
            raise loader.error(where, "expected a table")
        self.loader = loader
        self.raw: Mapping[str, Any] = raw
        self.where = where
        self.cls = cls
        keys = section_keys(cls)
        self.key: dict[str, str] = {}  # field → its (first) TOML key
        for key, name in keys.items():
            self.key.setdefault(name, key)
        self.read: set[str] = set()
        for key in raw:
            if key not in keys:
                raise loader.error(
                    self.dotted(key), f"unknown key; expected one of {', '.join(keys)}"
                )

    def dotted(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def path(self, name: str) -> str:
        """The dotted key of field ``name`` (``probe.timeout_s``), for errors."""
        return self.dotted(self.key[name])

    def __contains__(self, name: object) -> bool:
        """True when the file sets the key of field ``name``."""
        return isinstance(name, str) and self.key.get(name, "") in self.raw

    def get(self, name: str, parse: _Parse[_T], absent: Callable[[], _T] | None = None) -> _T:
        """Field ``name``: its key parsed, else ``absent()``, else the dataclass default.

        Raises:
            ConfigError: the value is invalid, or the key is required and missing.
        """
        self.read.add(name)
        if name in self:
            return parse(self.raw[self.key[name]], self.path(name))
        if absent is not None:
            return absent()
        default = _default(self.cls, name)
        if default is MISSING:
            what = "key" if self.where else "section"
            raise self.loader.error(self.path(name), f"required {what} missing")
        value: _T = default
        return value

    def build(self, **parsers: _Parse[Any]) -> _S:
        """``cls`` from one parser per key field (an absent key gets its default)."""
        value = self.cls(**{name: self.get(name, parse) for name, parse in parsers.items()})
        self.done()
        return value

    def require(self) -> None:
        """Refuse the table when any key without a default is missing, before reading."""
        for name in self.key:
            if name not in self and _default(self.cls, name) is MISSING:
                what = "key" if self.where else "section"
                raise self.loader.error(self.path(name), f"required {what} missing")

    def done(self) -> None:
        unread = set(self.key) - self.read
        if unread:  # a programming error, seen by the first test that loads this table
            raise TypeError(f"{self.cls.__name__}: no parser for {sorted(unread)}")


class _Loader:
    """Walks the TOML document once; knows the file name for every error it raises."""

    def __init__(self, path: str, base_dir: Path) -> None:
        self.path = path
        self.base_dir = base_dir
        self.warnings: list[str] = []

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self.path, key, reason)

    def warn(self, key: str, text: str) -> None:
        self.warnings.append(f"{key}: {text}")

    # -- typed values (all parsers take the value and its dotted key) --------------------

    def typed(self, value: Any, key: str, kind: type[_T]) -> _T:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        # bool is an int subclass: `down_after = true` must not pass as 1.
        if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
            raise self.error(key, f"expected {_kind_name(kind)}, got {value!r}")
        return value

    def flag(self, value: Any, key: str) -> bool:
        return self.typed(value, key, bool)

    def number(self, value: Any, key: str) -> float:
        return self.typed(value, key, float)

    def positive(self, value: Any, key: str) -> float:
        number = self.number(value, key)
        if not number > 0:
            raise self.error(key, f"must be positive, got {number}")
        return number

    def non_negative(self, value: Any, key: str) -> float:
        number = self.number(value, key)
        if not number >= 0:
            raise self.error(key, f"must be 0 or more, got {number}")
        return number

    def count(self, value: Any, key: str) -> int:
        number = self.typed(value, key, int)
        if number < 1:
            raise self.error(key, f"must be at least 1, got {number}")
        return number

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {value!r}")
        return value.strip()

    def choice(self, options: tuple[str, ...]) -> _Parse[str]:
        """A parser for one of ``options`` (case-insensitive)."""

        def parse(value: Any, key: str) -> str:
            word = self.typed(value, key, str).strip().lower()
            if word not in options:
                raise self.error(key, f"{word!r}: expected one of {', '.join(options)}")
            return word

        return parse

    def items(self, parse: _Parse[_T]) -> _Parse[tuple[_T, ...]]:
        """A parser for a list whose items ``parse`` reads (duplicates refused)."""

        def parse_list(value: Any, key: str) -> tuple[_T, ...]:
            raw = self.typed(value, key, list)
            out = tuple(parse(item, f"{key}[{i}]") for i, item in enumerate(raw))
            if len(set(out)) != len(out):
                raise self.error(key, "duplicate entries")
            return out

        return parse_list

    # -- value parsers ------------------------------------------------------------------

    def listen(self, value: Any, key: str) -> Endpoint:
        """``udp:IP:PORT`` / ``tcp:[v6]:PORT`` / ``tls:IP`` (port 0 = ephemeral)."""
        text = self.string(value, key)
        transport, sep, rest = text.partition(":")
        if not sep or transport.lower() not in TRANSPORTS:
            raise self.error(key, f"{text!r}: expected transport:ip:port, transport udp|tcp|tls")
        transport = transport.lower()
        host, port = self.hostport(rest, key, default_port(transport), allow_zero=True)
        if not _is_ip(host):
            raise self.error(key, f"{text!r}: listen needs an IP address, not a name")
        return Endpoint(transport, host, port)

    def hostport(
        self, text: str, key: str, default: int | None, *, allow_zero: bool = False
    ) -> tuple[str, int]:
        host, port = _split_hostport(text)
        if host is None:
            raise self.error(key, f"{text!r}: not host[:port]")
        if not (_is_ip(host) or _is_dns_name(host)):
            raise self.error(key, f"{text!r}: {host!r} is neither an IP address nor a host name")
        if port is None:
            if default is None:
                raise self.error(key, f"{text!r}: a port is required")
            return host, default
        low = 0 if allow_zero else 1
        if not port.isdigit() or not low <= int(port) <= 65535:
            raise self.error(key, f"{text!r}: bad port {port!r} (expected {low}–65535)")
        return host, int(port)

    def network(self, value: Any, key: str) -> IPNetwork:
        text = self.string(value, key)
        try:
            return ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise self.error(key, f"{text!r}: not a CIDR network ({exc})") from exc

    def pbx(self, value: Any, key: str) -> Endpoint:
        """``host[:port][;transport=udp|tcp|tls]``."""
        text = self.string(value, key)
        hostport, _, params = text.partition(";")
        transport = "udp"
        if params:
            name, _, param = params.partition("=")
            if name.strip().lower() != "transport" or param.strip().lower() not in TRANSPORTS:
                raise self.error(key, f"{text!r}: only ;transport=udp|tcp|tls may follow")
            transport = param.strip().lower()
        host, port = self.hostport(hostport, key, default_port(transport))
        return Endpoint(transport, host, port)

    def gateway(self, value: Any, key: str) -> tuple[str, int | None]:
        text = self.string(value, key)
        host, port = _split_hostport(text)
        if host is None or not (_is_ip(host) or _is_dns_name(host)):
            raise self.error(key, f"{text!r}: expected an IP, ip:port or a host name")
        if port is None:
            return host, None
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise self.error(key, f"{text!r}: bad port {port!r} (expected 1–65535)")
        return host, int(port)

    def status_class(self, value: Any, key: str) -> frozenset[int]:
        """A healthy code: ``200``, ``"404"`` or a class ``"2xx"``."""
        text = str(value).strip().lower() if isinstance(value, int | str) else ""
        if isinstance(value, bool):
            text = ""
        if len(text) == 3 and text[0] in "123456" and text[1:] == "xx":
            base = int(text[0]) * 100
            return frozenset(range(base, base + 100))
        if text.isdigit() and 100 <= int(text) <= 699:
            return frozenset({int(text)})
        raise self.error(key, f"{value!r}: expected a status code 100–699 or a class like '2xx'")

    def failover_code(self, value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected a status code, got {value!r}")
        # RFC 3261 §16.7: a 2xx is final for the caller; failing over after one would
        # fork a second answered call. 1xx is not a final response at all.
        if not 300 <= value <= 699:
            raise self.error(key, f"{value}: only final non-2xx codes (300–699) can fail over")
        return value

    def file(self, value: Any, key: str) -> str:
        text = self.string(value, key)
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = self.base_dir / path
        return str(path)

    def listeners(self, value: Any, key: str) -> tuple[Endpoint, ...]:
        listen = self.items(self.listen)(value, key)
        if not listen:
            raise self.error(key, "at least one listener is required")
        return listen

    def domain(self, value: Any, key: str) -> str:
        domain = self.typed(value, key, str).strip().lower()
        if domain.endswith(".sip.twilio.com"):
            self.warn(key, f"{domain!r} reduced to its unique part")
            domain = domain[: -len(".sip.twilio.com")]
        if not _is_label(domain):
            raise self.error(
                key, f"{domain!r} must be one DNS label: the unique part of <domain>.sip.twilio.com"
            )
        return domain

    def transport(self, value: Any, key: str) -> str:
        transport = self.typed(value, key, str).strip().lower()
        if transport not in TRANSPORTS:
            raise self.error(key, f"{transport!r}: expected udp, tcp or tls")
        return transport

    def targets(self, value: Any, key: str) -> tuple[tuple[str, int | None], ...]:
        targets = self.items(self.gateway)(value, key)
        if not targets:
            raise self.error(key, "empty; omit the key for Twilio's list")
        return targets

    def healthy_codes(self, value: Any, key: str) -> frozenset[int]:
        codes = frozenset[int]().union(*self.items(self.status_class)(value, key))
        if not codes:
            raise self.error(key, "at least one code is required")
        return codes

    def jitter(self, value: Any, key: str) -> float:
        jitter = self.number(value, key)
        if not 0 <= jitter <= 0.5:
            raise self.error(key, f"{jitter}: expected 0–0.5")
        return jitter

    def failover_codes(self, value: Any, key: str) -> frozenset[int]:
        return frozenset(self.items(self.failover_code)(value, key))

    def reject_policy(self, value: Any, key: str) -> RejectPolicy:
        # `403` may be written as a number; `true` is an int too and is not a policy.
        text = str(value) if isinstance(value, int | str) and value is not True else value
        if text not in ("drop", "403"):
            raise self.error(key, f"{text!r}: expected 'drop' or '403'")
        return "drop" if text == "drop" else "403"

    def admin_listen(self, value: Any, key: str) -> Endpoint:
        text = self.string(value, key)
        host, port = self.hostport(text, key, None, allow_zero=True)
        if not _is_ip(host):
            raise self.error(key, f"{text!r}: needs an IP address, not a name")
        return Endpoint("tcp", host, port)

    def catalogue_edge(self, value: Any, key: str) -> EdgeMatch:
        """The one call into the Twilio catalogue for edge names (legacy ids warn)."""
        try:
            match = load_catalogue().edge(self.typed(value, key, str))
        except CatalogueError as exc:
            raise self.error(key, exc.reason) from exc
        if match.warning is not None:
            self.warn(key, match.warning)
        return match

    # -- sections (each reads one table against its dataclass) --------------------------

    def build(self, doc: Mapping[str, Any]) -> Config:
        t = _Table(self, doc, "", Config)
        t.require()  # name every missing section before complaining inside one
        inside = t.get("inside", self.inside)
        outside = t.get("outside", self.outside)
        config = Config(
            path=self.path,
            inside=inside,
            outside=outside,
            edges=t.get("edges", lambda value, key: self.edges(value, key, outside)),
            inbound=t.get("inbound", self.inbound),
            tls=t.get("tls", self.tls),
            timers=t.get("timers", self.timers),
            probe=t.get("probe", self.probe),
            failover=t.get("failover", self.failover),
            admin=t.get("admin", self.admin),
            log=t.get("log", self.log),
            daemon=t.get("daemon", self.daemon),
            limits=t.get("limits", self.limits),
            process=t.get("process", self.process),
        )
        t.done()
        self.check_probe(config)
        self.check_tls(config)
        self.check_process(config)
        return replace(config, warnings=tuple(self.warnings))

    def inside(self, raw: Any, where: str) -> InsideConfig:
        t = _Table(self, raw, where, InsideConfig)
        inside = t.build(listen=self.listeners, allow=self.items(self.network), pbx=self.pbx)
        if not inside.allow:
            self.warn(t.path("allow"), "empty: no PBX may place calls")
        return inside

    def outside(self, raw: Any, where: str) -> OutsideConfig:
        t = _Table(self, raw, where, OutsideConfig)
        return t.build(listen=self.listeners, domain=self.domain, allow_public=self.flag,
                       user_agent=self.header_value)

    def header_value(self, value: Any, key: str) -> str:
        """Text for a SIP header value: printable ASCII, no CR/LF (no header injection)."""
        text = self.string(value, key)
        if not all(" " <= c <= "~" for c in text):
            raise self.error(key, f"{text!r}: printable ASCII only")
        return text

    def edges(self, raw: Any, where: str, outside: OutsideConfig) -> tuple[EdgeConfig, ...]:
        if not isinstance(raw, list) or not raw:
            raise self.error(where, "expected one or more [[edges]] tables")
        edges = tuple(self.edge(entry, f"{where}[{i}]", outside) for i, entry in enumerate(raw))
        names = [e.name for e in edges]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise self.error(f"{where}[{i}].name", f"edge {name!r} is listed twice")
        return edges

    def edge(self, raw: Any, where: str, outside: OutsideConfig) -> EdgeConfig:
        t = _Table(self, raw, where, EdgeConfig)
        edge = t.get("name", self.catalogue_edge).edge
        transport = t.get("transport", self.transport)
        targets = t.get(
            "gateways",
            self.targets,
            absent=lambda: tuple((str(ip), edge.port(transport)) for ip in edge.signalling_ips),
        )
        weights = self.weights(t, len(targets))
        gateways = tuple(
            GatewayConfig(host, port, transport, w)
            for (host, port), w in zip(targets, weights, strict=True)
        )
        for j, gw in enumerate(gateways):
            self.check_target(gw, edge.name, f"{t.path('gateways')}[{j}]", outside.allow_public)
        try:
            domain = load_catalogue().localized_domain(outside.domain, edge.name)
        except CatalogueError as exc:
            raise self.error("outside.domain", exc.reason) from exc
        t.done()
        return EdgeConfig(
            name=edge.name,
            region=edge.region,
            transport=transport,
            gateways=gateways,
            localized_domain=domain,
            from_catalogue="gateways" not in t,
        )

    def weights(self, t: _Table[EdgeConfig], n: int) -> tuple[int, ...]:
        """``weights``: one per gateway; absent, every gateway has the default weight."""
        if "weights" not in t.raw:
            return (_default(GatewayConfig, "weight"),) * n
        key = t.dotted("weights")
        weights = self.typed(t.raw["weights"], key, list)
        if len(weights) != n:
            raise self.error(key, f"{len(weights)} weights for {n} gateways")
        for j, w in enumerate(weights):
            if isinstance(w, bool) or not isinstance(w, int) or w < 1:
                raise self.error(f"{key}[{j}]", f"expected an integer ≥ 1, got {w!r}")
        return tuple(weights)

    def check_target(self, gw: GatewayConfig, edge: str, key: str, allow_public: bool) -> None:
        catalogue = load_catalogue()
        kind = catalogue.classify_twilio_host(gw.host)
        if kind == "public":
            if not allow_public:
                raise self.error(
                    key,
                    f"{gw.host!r} is a public Twilio address: calls would leave the private "
                    "link (set outside.allow_public = true to permit it)",
                )
            self.warn(key, f"{gw.host!r} is a public Twilio address (allow_public = true)")
        owner = catalogue.edge_for_ip(gw.host) if gw.is_ip else None
        if owner is not None and owner.name != edge:
            # The Request-URI host follows the edge, so a gateway of another edge would
            # get calls addressed to the wrong localized domain.
            self.warn(key, f"{gw.host} is a gateway of {owner.name}, listed under {edge}")

    def inbound(self, raw: Any, where: str) -> InboundConfig:
        t = _Table(self, raw, where, InboundConfig)
        return t.build(strip_edge_params=self.flag, reject_unknown=self.reject_policy,
                       check_media=self.flag)

    def tls(self, raw: Any, where: str) -> TlsConfig:
        t = _Table(self, raw, where, TlsConfig)
        return t.build(cafile=self.file, certfile=self.file, keyfile=self.file)

    def check_tls(self, config: Config) -> None:
        """TLS anywhere needs a CA bundle; a TLS listener also needs a certificate."""
        if not config.uses_tls:
            return
        tls = config.tls
        if tls.cafile is None:
            raise self.error("tls.cafile", "TLS is used but no CA file is configured")
        listens = any(e.transport == "tls" for e in config.listen)
        if listens and tls.certfile is None:
            raise self.error("tls.certfile", "a tls: listener needs a certificate")
        for key in section_keys(TlsConfig):
            value = getattr(tls, key)
            if value is not None and not Path(value).is_file():
                raise self.error(f"tls.{key}", f"{value}: no such file")

    def timers(self, raw: Any, where: str) -> Timers:
        t = _Table(self, raw, where, Timers)
        # Timers refuses t2 < t1 itself (ValueError); say it with the file's key names.
        t1, t2 = t.get("t1", self.positive), t.get("t2", self.positive)
        if t2 < t1:
            raise self.error(t.path("t2"), f"{t2} is smaller than {t.key['t1']} ({t1})")
        return t.build(t1=self.positive, t2=self.positive, t4=self.positive)

    def probe(self, raw: Any, where: str) -> ProbeConfig:
        t = _Table(self, raw, where, ProbeConfig)
        probe = t.build(
            interval_up_s=self.positive,
            interval_down_s=self.positive,
            timeout_s=self.positive,
            down_after=self.count,
            up_after=self.count,
            healthy_codes=self.healthy_codes,
            jitter_fraction=self.jitter,
            retry_after_max_s=self.positive,
        )
        fastest = min(probe.interval_up_s, probe.interval_down_s)
        if probe.timeout_s > fastest:
            self.warn(t.path("timeout_s"), f"{probe.timeout_s} s exceeds a probe interval")
        return probe

    def check_probe(self, config: Config) -> None:
        """Twilio's probing etiquette, which depends on where the gateways are."""
        probe = config.probe
        catalogue = load_catalogue()
        reaches_twilio = any(
            catalogue.classify_twilio_host(gw.host) != "other"
            for e in config.edges
            for gw in e.gateways
        )
        # Steady state only: a DOWN gateway is probed faster on purpose (issue 4 default 5 s).
        if reaches_twilio and probe.interval_up_s < _TWILIO_MIN_PROBE_INTERVAL_S:
            self.warn(
                "probe.interval_up_s",
                f"probing Twilio every {probe.interval_up_s:g} s; Twilio asks for at most one "
                "ping per 10–15 s per gateway",
            )

    def failover(self, raw: Any, where: str) -> FailoverConfig:
        t = _Table(self, raw, where, FailoverConfig)
        return t.build(no_provisional_timeout_s=self.positive, codes=self.failover_codes)

    def admin(self, raw: Any, where: str) -> AdminConfig:
        t = _Table(self, raw, where, AdminConfig)
        return t.build(listen=self.admin_listen)

    def log(self, raw: Any, where: str) -> LogConfig:
        t = _Table(self, raw, where, LogConfig)
        return t.build(level=self.choice(_LOG_LEVELS), format=self.choice(LOG_FORMATS))

    def daemon(self, raw: Any, where: str) -> DaemonConfig:
        t = _Table(self, raw, where, DaemonConfig)
        return t.build(drain_timeout_s=self.positive)

    def limits(self, raw: Any, where: str) -> LimitsConfig:
        t = _Table(self, raw, where, LimitsConfig)
        return t.build(source_rate_per_s=self.positive, source_burst=self.positive,
                       ban_s=self.positive, call_rate_per_s=self.non_negative,
                       call_burst=self.positive, gateway_calls_per_s=self.non_negative,
                       emergency_numbers=self.items(self.dial_string),
                       max_sources=self.count, max_transactions=self.count,
                       tcp_max_connections=self.count, tcp_max_connections_per_ip=self.count,
                       tcp_first_byte_timeout_s=self.positive,
                       tcp_message_timeout_s=self.positive,
                       tcp_max_message_bytes=self.message_size,
                       tcp_idle_timeout_s=self.positive, max_headers=self.count,
                       max_header_line_bytes=self.count, max_via=self.count,
                       max_branch_bytes=self.count)

    def process(self, raw: Any, where: str) -> ProcessConfig:
        t = _Table(self, raw, where, ProcessConfig)
        return t.build(workers=self.workers, port_stride=self.port_stride)

    def workers(self, value: Any, key: str) -> int:
        """``"auto"`` (one per CPU) or an integer 1–64."""
        if isinstance(value, str) and value.strip().lower() == "auto":
            return auto_workers()
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f'expected "auto" or an integer, got {value!r}')
        if not 1 <= value <= _MAX_WORKERS:
            raise self.error(key, f'{value}: expected 1 to {_MAX_WORKERS}, or "auto"')
        return value

    def port_stride(self, value: Any, key: str) -> int:
        number = self.typed(value, key, int)
        if not 1 <= number <= _MAX_PORT_STRIDE:
            raise self.error(key, f"{number}: expected 1 to {_MAX_PORT_STRIDE}")
        return number

    def check_process(self, config: Config) -> None:
        """With several workers, every worker endpoint must be a port of its own.

        Worker ports derive from the listener ports, so a listener on port 0 (ephemeral)
        cannot have workers. Each derived endpoint must be a valid port and must not take
        the port of a listener, of the admin listener, or of another derived endpoint in
        the same port space (UDP; TCP and TLS) on the same host, an unspecified address
        (0.0.0.0, ::) taking the port on every host of its family: the bind would fail,
        or worse, steal the other socket's traffic.
        """
        process = config.process
        if process.workers == 1:
            return
        for ep in config.listen:
            if ep.port == 0:
                raise self.error(
                    "process.workers",
                    f"{process.workers} workers need fixed listener ports (worker ports derive "
                    f"from them): {ep} has port 0",
                )
        taken: dict[tuple[str, int], list[tuple[IPAddress, str]]] = {}
        fixed = [(ep, f"listener {ep}") for ep in config.listen]
        if config.admin.listen is not None:
            fixed.append((config.admin.listen, f"admin.listen {config.admin.listen.hostport}"))
        for ep, name in fixed:  # collisions between these are not [process]'s to report
            taken.setdefault((_PORT_SPACE[ep.transport], ep.port), []).append(
                (ipaddress.ip_address(ep.host), name))
        for index in range(process.workers):
            for shared, own in _derive_endpoints(config, index).items():
                if own.port > 65535:
                    raise self.error(
                        "process.port_stride",
                        f"worker {index}'s port for {shared} would be {own.port}, above 65535: "
                        "fewer workers, a smaller port_stride or a lower listener port",
                    )
                name = f"worker {index}'s {own} (for {shared})"
                ip = ipaddress.ip_address(own.host)
                claims = taken.setdefault((_PORT_SPACE[own.transport], own.port), [])
                for other_ip, other in claims:
                    if _same_host(ip, other_ip):
                        raise self.error(
                            "process.port_stride",
                            f"{name} collides with {other}: choose another port_stride",
                        )
                claims.append((ip, name))

    def message_size(self, value: Any, key: str) -> int:
        """A stream message size cap: at least a minimal INVITE, at most 16 MiB."""
        number = self.typed(value, key, int)
        if not 1024 <= number <= 16 * 1024 * 1024:
            raise self.error(key, f"{number}: expected 1024 to 16777216 bytes")
        return number

    def dial_string(self, value: Any, key: str) -> str:
        """An emergency number: digits, optionally with a leading ``+``."""
        text = self.string(value, key)
        digits = text[1:] if text.startswith("+") else text
        if not digits.isdigit() or len(digits) > 15:
            raise self.error(key, f"{text!r}: expected a dial string of digits (E.164 max 15)")
        return digits


def _same_host(a: IPAddress, b: IPAddress) -> bool:
    """True when sockets bound to ``a`` and ``b`` on one port would collide."""
    return a.version == b.version and (a == b or a.is_unspecified or b.is_unspecified)


def _kind_name(kind: type) -> str:
    return {str: "a string", bool: "true or false", int: "an integer", float: "a number"}.get(
        kind, "a list" if kind is list else kind.__name__
    )


def _split_hostport(text: str) -> tuple[str | None, str | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 literal."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None, None
        host, rest = text[1:end], text[end + 1 :]
        if not _is_ip(host) or ":" not in host:
            return None, None
        if not rest:
            return host, None
        if not rest.startswith(":"):
            return None, None
        return host, rest[1:]
    if text.count(":") > 1:  # a bare IPv6 literal cannot carry a port
        return (text, None) if _is_ip(text) else (None, None)
    host, sep, port = text.partition(":")
    if not host:
        return None, None
    return host.lower() if not _is_ip(host) else host, port if sep else None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_label(text: str) -> bool:
    return (
        0 < len(text) <= 63 and set(text) <= _LDH and not text.startswith("-") and text[-1] != "-"
    )


def _is_dns_name(text: str) -> bool:
    name = text.lower().rstrip(".")
    labels = name.split(".")
    # All-numeric final labels are IPs gone wrong (256.1.1.1), not names.
    return (
        0 < len(name) <= 253
        and all(_is_label(label) for label in labels)
        and not labels[-1].isdigit()
    )


# ----------------------------------------------------------------------------------------
# The core's settings (house.md layer 3: config builds them, the core never sees TOML)


def worker_endpoints(config: Config, index: int) -> dict[Endpoint, Endpoint]:
    """Worker ``index``'s own endpoint for every listener (``[process]``).

    Args:
        config: a validated configuration (its derived endpoints were checked at load).
        index: the worker, ``0 .. config.process.workers - 1``.

    Returns:
        Shared listener → the worker's endpoint for it, for every listener of
        ``config.listen`` in that order: same transport and host, port ``listener port +
        port_stride × (index + 1)``. Empty with one worker: a single process owns no
        endpoint besides the listeners (and a listener on port 0 derives none).

    Raises:
        ValueError: ``index`` is not a worker of ``config``.
    """
    workers = config.process.workers
    if not 0 <= index < workers:
        raise ValueError(f"worker {index}: [process] runs workers 0 to {workers - 1}")
    if workers == 1:
        return {}
    return _derive_endpoints(config, index)


def _derive_endpoints(config: Config, index: int) -> dict[Endpoint, Endpoint]:
    offset = config.process.port_stride * (index + 1)
    return {ep: Endpoint(ep.transport, ep.host, ep.port + offset) for ep in config.listen}


def build_settings(config: Config, worker: WorkerPlace | None = None) -> ProxySettings:
    """The proxy core's typed settings from a validated config.

    Args:
        config: a validated configuration.
        worker: the worker process the core runs in, or None for a single process. With
            a place, the settings carry the worker's own endpoints (``own``) and every
            worker's (``siblings``), and with more than one worker the admission limits
            are this worker's share: Call-ID steering spreads calls, and with them every
            source's messages, evenly over the workers, so each worker's buckets see about
            1/count of the traffic (see ``LimitsConfig``).

    Returns:
        The settings ``ProxyCore`` runs on.

    Raises:
        ValueError: ``worker.count`` is not ``config.process.workers`` (a change of
            ``[process]`` needs new workers, not a reload of the running ones).
    """
    own: dict[Endpoint, Endpoint] = {}
    siblings: tuple[Endpoint, ...] = ()
    count = 1
    if worker is not None:
        if worker.count != config.process.workers:
            raise ValueError(f"worker {worker.index} of {worker.count}, but [process] "
                             f"workers = {config.process.workers}")
        count = worker.count
        own = worker_endpoints(config, worker.index)
        siblings = tuple(ep for index in range(count)
                         for ep in worker_endpoints(config, index).values())
    return ProxySettings(
        inside=config.inside.listen,
        outside=config.outside.listen,
        inside_allow=tuple(config.inside.allow),
        pbx=config.inside.pbx,
        domain=config.outside.domain,
        strip_edge_params=config.inbound.strip_edge_params,
        reject_unknown=RejectUnknown(config.inbound.reject_unknown),
        timers=config.timers,
        failover_codes=config.failover.codes,
        no_provisional_timeout_s=config.failover.no_provisional_timeout_s,
        probe_timeout_s=config.probe.timeout_s,
        # About twice the down-probe interval: by then a recovered gateway is seen UP.
        retry_after_s=max(1, round(2 * config.probe.interval_down_s)),
        media=_media_range() if config.inbound.check_media else None,
        limits=_admission_limits(config.limits, count),
        message_limits=Limits(max_headers=config.limits.max_headers,
                              max_line_bytes=config.limits.max_header_line_bytes,
                              max_via=config.limits.max_via,
                              max_branch_bytes=config.limits.max_branch_bytes),
        user_agent=config.outside.user_agent.encode("ascii") or None,
        own=own,
        siblings=siblings,
    )


def build_stream_settings(config: Config) -> StreamSettings:
    """The TCP/TLS transport's limits from ``[limits]`` (the rest keep their defaults)."""
    limits = config.limits
    return replace(_STREAM, max_connections=limits.tcp_max_connections,
                   max_connections_per_ip=limits.tcp_max_connections_per_ip,
                   first_byte_timeout_s=limits.tcp_first_byte_timeout_s,
                   message_timeout_s=limits.tcp_message_timeout_s,
                   max_message=limits.tcp_max_message_bytes,
                   idle_timeout_s=limits.tcp_idle_timeout_s)


def _admission_limits(limits: LimitsConfig, workers: int = 1) -> AdmissionLimits:
    """The core's limits: ``[limits]`` as written, or one worker's share of them.

    A rate is divided exactly (at least 1/s, 0 stays "no cap"): rounding it up would let
    the workers together exceed it, and ``gateway_calls_per_s`` is Twilio's limit (30/s per
    gateway: 4 workers × ceil(7.5) would be 32/s). A burst is whole tokens, divided and
    rounded up, at least 1 (a bucket whose burst is below one token never admits);
    ``max_transactions`` likewise, since each worker holds about 1/N of the transactions.
    ``max_sources`` is not divided: it bounds a table in which every worker sees every
    source (a source's calls are spread over all workers); nor are ``ban_s`` and the
    emergency numbers.
    """
    return AdmissionLimits(
        source_rate_per_s=_share_rate(limits.source_rate_per_s, workers),
        source_burst=_share_whole(limits.source_burst, workers),
        ban_s=limits.ban_s,
        call_rate_per_s=_share_rate(limits.call_rate_per_s, workers),
        call_burst=_share_whole(limits.call_burst, workers),
        gateway_calls_per_s=_share_rate(limits.gateway_calls_per_s, workers),
        emergency_numbers=frozenset(n.encode("ascii") for n in limits.emergency_numbers),
        max_sources=limits.max_sources,
        max_transactions=int(_share_whole(limits.max_transactions, workers)))


def _share_rate(rate: float, workers: int) -> float:
    """One worker's share of a per-second rate: exact, at least 1/s; 0 (off) stays 0."""
    if workers == 1 or rate <= 0:
        return rate
    return max(1.0, rate / workers)


def _share_whole(amount: float, workers: int) -> float:
    """One worker's share of a burst or a table size: rounded up, at least 1."""
    if workers == 1:
        return amount
    return float(max(1, math.ceil(amount / workers)))


def _media_range() -> MediaRange:
    catalogue = load_catalogue()
    low, high = catalogue.media_ports
    return MediaRange(catalogue.media_network, low, high)


# ----------------------------------------------------------------------------------------
# Summary for `sipedge check`


def summary(config: Config) -> str:
    """What ``sipedge check`` prints: listeners, domain, edges, probing, warnings.

    The sections with a line of their own are worded by hand; every other section
    (``[log]``, ``[daemon]``, and any section added later) is listed from its fields as
    ``key value, ...``. No value here is a default: all of them come from ``config``.

    Args:
        config: a validated configuration.

    Returns:
        Multi-line text (no trailing newline).
    """
    lines = [f"config {config.path}: OK"]
    lines.append("inside:  " + ", ".join(map(str, config.inside.listen)))
    allow = ", ".join(map(str, config.inside.allow)) or "(nobody)"
    lines.append(f"  allow  {allow}")
    lines.append(f"  pbx    {config.inside.pbx}")
    lines.append("outside: " + ", ".join(map(str, config.outside.listen)))
    public = " (public targets allowed)" if config.outside.allow_public else ""
    lines.append(f"  domain {config.outside.domain}{public}")
    for priority, edge in enumerate(config.edges, 1):
        source = "Twilio catalogue" if edge.from_catalogue else "config"
        lines.append(
            f"edge {priority}: {edge.name} ({edge.region}) over {edge.transport}, "
            f"R-URI host {edge.localized_domain}, gateways from {source}:"
        )
        for gw in edge.gateways:
            weight = f" weight {gw.weight}" if gw.weight != 1 else ""
            dns = "" if gw.is_ip else " (DNS, RFC 3263)"
            lines.append(f"  {gw.endpoint}{weight}{dns}")
    p = config.probe
    lines.append(
        f"probe: every {p.interval_up_s:g} s up / {p.interval_down_s:g} s down "
        f"(±{p.jitter_fraction:.0%}), timeout {p.timeout_s:g} s, down after {p.down_after}, "
        f"up after {p.up_after}, healthy {_codes_text(p.healthy_codes)}, "
        f"Retry-After capped at {p.retry_after_max_s:g} s"
    )
    f = config.failover
    lines.append(
        f"failover: no provisional within {f.no_provisional_timeout_s:g} s, "
        f"or final {_codes_text(f.codes)}"
    )
    t = config.timers
    lines.append(f"timers: T1 {t.t1:g} s, T2 {t.t2:g} s, T4 {t.t4:g} s")
    rejects = "dropped" if config.inbound.reject_unknown == "drop" else "answered 403"
    strip = ", edge/tnx stripped" if config.inbound.strip_edge_params else ""
    lines.append(f"inbound: unknown sources {rejects}{strip}")
    if config.uses_tls:
        lines.append(f"tls: CA {config.tls.cafile}, certificate {config.tls.certfile or '-'}")
    admin = str(config.admin.listen.hostport) if config.admin.listen else "off"
    lines.append(f"admin: {admin}")
    lines.extend(_process_lines(config))
    for key, name in section_keys(Config).items():
        if key not in _WORDED_SECTIONS:
            lines.append(f"{key}: {_fields_text(getattr(config, name))}")
    lines.extend(f"warning: {w}" for w in config.warnings)
    return "\n".join(lines)


#: The sections ``summary`` words by hand (``edges`` as one line per edge).
_WORDED_SECTIONS = frozenset(
    {"inside", "outside", "edges", "probe", "failover", "timers", "inbound", "tls", "admin",
     "process"}
)


def _process_lines(config: Config) -> list[str]:
    """``[process]``: the workers, each one's own endpoints and its share of the limits."""
    process = config.process
    if process.workers == 1:
        return [f"process: 1 worker (a single process; port_stride {process.port_stride} unused)"]
    lines = [f"process: {process.workers} workers sharing the listeners, each with its own "
             f"endpoints at listener port + {process.port_stride} × (worker + 1); "
             "worker 0 probes"]
    for index in range(process.workers):
        own = ", ".join(map(str, worker_endpoints(config, index).values()))
        lines.append(f"  worker {index}: {own}")
    share = _admission_limits(config.limits, process.workers)
    lines.append(
        f"  limits per worker: source_rate_per_s {share.source_rate_per_s:g}, source_burst "
        f"{share.source_burst:g}, call_rate_per_s {share.call_rate_per_s:g}, call_burst "
        f"{share.call_burst:g}, gateway_calls_per_s {share.gateway_calls_per_s:g}, "
        f"max_transactions {share.max_transactions}"
    )
    return lines


def _fields_text(section: DataclassInstance) -> str:
    """``key value, key value`` in field order, with the file's key names."""
    parts = []
    for key, name in section_keys(type(section)).items():
        value = getattr(section, name)
        parts.append(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(parts)


def _codes_text(codes: frozenset[int]) -> str:
    """``2xx, 404`` rather than a hundred numbers."""
    parts: list[str] = []
    remaining = set(codes)
    for klass in range(1, 7):
        block = set(range(klass * 100, klass * 100 + 100))
        if block <= remaining:
            parts.append(f"{klass}xx")
            remaining -= block
    parts.extend(str(c) for c in sorted(remaining))
    return ", ".join(sorted(parts, key=lambda s: s.replace("xx", "00")))
