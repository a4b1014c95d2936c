"""Host firewall rules for the private link, generated from the config and the catalogue.

Theory of operation (issue 12): :func:`build_ruleset` reads a validated ``Config`` and the
Twilio catalogue once and turns them into a :class:`Ruleset`: named address sets (one per
configured edge and address family, the inside allow list), named counters, and an ordered
tuple of :class:`Rule` values, each saying chain, addresses, protocol, ports, verdict and why.
:func:`render_nftables` and :func:`render_iptables` only *print* that one list, so the two
formats cannot drift apart. Everything is a pure function returning text: nothing here runs
``nft`` or ``iptables``, and nothing is ever applied to the system.

What the rules allow, and why:

- SIP signalling between the outside listeners and the configured edges' gateways, on the
  transports the config actually uses: inbound from every configured gateway to every outside
  listener (on the listener's transport; Twilio chooses which transport it sends over), and
  outbound to each edge's gateways on the edge's transport and port (5060 UDP/TCP, 5061 TLS).
- The inside listeners only from ``inside.allow`` and, when it is an IP, ``inside.pbx``
  (calls from Twilio are sent there, and it sends the BYEs of those calls).
- Twilio's media range (catalogue: 168.86.128.0/18, UDP 10000–60000) both ways. Those are
  *Twilio's* ports; the PBX's own RTP ports are the PBX's business and are not named.
- The admin listener, when it is not on loopback, only from ``inside.allow``.
- Any other packet to a SIP listener's port is dropped and counted.

Loopback is left untouched and established/related flows are accepted. Every chain has policy
accept and the whole ruleset lives in its own table (``table inet sipedge``) or its own chains
(``SIPEDGE*``), so it never clobbers the host's other rules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Literal

from sipedge import __version__
from sipedge.catalogue import Catalogue
from sipedge.catalogue import load as load_catalogue
from sipedge.config import Config, EdgeConfig, worker_endpoints
from sipedge.sip.address import Endpoint

__all__ = [
    "FORMATS",
    "AddressSet",
    "Rule",
    "Ruleset",
    "build_ruleset",
    "render",
    "render_iptables",
    "render_nftables",
]

#: ``sipedge firewall --format`` choices.
FORMATS = ("nftables", "iptables")
#: The nftables table everything lives in (``inet``: IPv4 and IPv6 in one table).
TABLE = "sipedge"

Chain = Literal["input", "output", "forward"]
#: ``pass`` leaves the packet to the rest of the host's firewall (loopback): ``accept`` in
#: our own nftables table (which ends only this table's chain), ``RETURN`` in iptables.
Verdict = Literal["accept", "drop", "pass"]
Family = Literal[4, 6]
Proto = Literal["udp", "tcp"]

_CHAINS: tuple[Chain, ...] = ("input", "output", "forward")
_IPTABLES_CHAIN = {"input": "SIPEDGE", "output": "SIPEDGE-OUTPUT", "forward": "SIPEDGE-FORWARD"}
_IPTABLES_HOOK = {"input": "INPUT", "output": "OUTPUT", "forward": "FORWARD"}
#: nftables keeps at most 128 bytes of a rule comment (NFTNL_UDATA_COMMENT_MAXLEN).
_COMMENT_MAX = 127
COUNTER_SIP = "sip_dropped"
COUNTER_ADMIN = "admin_dropped"


@dataclass(frozen=True, slots=True)
class AddressSet:
    """A named set of addresses or networks of one family.

    Attributes:
        name: nftables set name (``gw_ashburn_ix_v4``).
        family: 4 or 6.
        addresses: hosts or CIDR networks, as text, in config order.
        comment: what the set holds, for humans.
    """

    name: str
    family: Family
    addresses: tuple[str, ...]
    comment: str

    @property
    def is_interval(self) -> bool:
        """True when the set holds networks (nftables needs ``flags interval``)."""
        return any("/" in a for a in self.addresses)


@dataclass(frozen=True, slots=True)
class Rule:
    """One filter rule, independent of the syntax it is printed in.

    An empty address tuple matches any address; ``family`` alone (no addresses) restricts
    the rule to IPv4 or IPv6. ``saddr_set``/``daddr_set`` name the :class:`AddressSet` the
    addresses came from (nftables refers to it; iptables expands it).

    Attributes:
        chain: ``input``, ``output`` or ``forward``.
        verdict: ``accept``, ``drop`` or ``pass``.
        comment: why the rule is there (printed with it).
        family: 4, 6 or None (both).
        saddr: source addresses/networks.
        saddr_set: name of the set ``saddr`` came from.
        daddr: destination addresses.
        daddr_set: name of the set ``daddr`` came from.
        proto: ``udp``, ``tcp`` or None.
        sport: inclusive source port range.
        dport: inclusive destination port range.
        counter: named counter the rule counts into (nftables), or None.
        loopback: match the loopback interface (``iif``/``oif lo``).
        established: match conntrack state established/related.
    """

    chain: Chain
    verdict: Verdict
    comment: str
    family: Family | None = None
    saddr: tuple[str, ...] = ()
    saddr_set: str | None = None
    daddr: tuple[str, ...] = ()
    daddr_set: str | None = None
    proto: Proto | None = None
    sport: tuple[int, int] | None = None
    dport: tuple[int, int] | None = None
    counter: str | None = None
    loopback: bool = False
    established: bool = False


@dataclass(frozen=True, slots=True)
class Ruleset:
    """Everything both renderers print.

    Attributes:
        header: comment lines describing where the rules came from (no ``#``).
        sets: named address sets, in the order rules first use them.
        counters: ``(name, comment)`` of named counters.
        rules: the rules, chain by chain, in evaluation order.
        notes: what the rules could not express (a gateway given as a DNS name, a listener
            on port 0); printed in the header and meant for stderr too.
    """

    header: tuple[str, ...]
    sets: tuple[AddressSet, ...]
    counters: tuple[tuple[str, str], ...]
    rules: tuple[Rule, ...]
    notes: tuple[str, ...]

    @property
    def has_ipv6(self) -> bool:
        """True when any set or rule is IPv6-only (iptables-restore cannot load those)."""
        return any(s.family == 6 for s in self.sets) or any(r.family == 6 for r in self.rules)


# ----------------------------------------------------------------------------------------
# Building the rules from the config


_Addr = (ipaddress.IPv4Address | ipaddress.IPv6Address
         | ipaddress.IPv4Network | ipaddress.IPv6Network)


def _family(item: _Addr) -> Family:
    return 4 if item.version == 4 else 6


def _proto(transport: str) -> Proto:
    # SIP over TLS runs on TCP (RFC 3261 §26.2.1); only the default port differs (5061,
    # §19.1.2), and that comes from the listener or gateway itself.
    return "udp" if transport == "udp" else "tcp"


def _clean(text: str) -> str:
    """Text safe inside a comment line or a quoted rule comment (no newlines, no quotes)."""
    return "".join(c if c.isprintable() and c not in '"\\' else "?" for c in text)


def _set_name(prefix: str, family: Family) -> str:
    return f"{prefix.replace('-', '_')}_v{family}"


def _split_families(items: Iterable[_Addr]) -> dict[Family, tuple[str, ...]]:
    """Addresses/networks as text by family (IPv4 first), duplicates once, order kept."""
    out: dict[Family, list[str]] = {}
    for item in items:
        bucket = out.setdefault(_family(item), [])
        if str(item) not in bucket:
            bucket.append(str(item))
    return {f: tuple(v) for f, v in sorted(out.items())}


def _with_workers(config: Config, listen: tuple[Endpoint, ...]) -> list[Endpoint]:
    """``listen`` and, with ``[process] workers`` > 1, each worker's own endpoint for it.

    Workers name their own port in Via and Record-Route, so Twilio's answers and in-dialog
    requests arrive there: the rules must let them in like the shared listener's.
    """
    out = list(listen)
    for index in range(config.process.workers if config.process.workers > 1 else 0):
        own = worker_endpoints(config, index)
        out += [own[ep] for ep in listen if ep in own]
    return out


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a listener can be reached: its family (None: ``::``, both) and address."""

    family: Family | None
    daddr: tuple[str, ...]

    @classmethod
    def of(cls, listen: Endpoint) -> _Target:
        ip = ipaddress.ip_address(listen.host)
        if ip.is_unspecified:
            # 0.0.0.0 takes IPv4 only; :: on Linux is dual-stack unless IPV6_V6ONLY.
            return cls(4 if ip.version == 4 else None, ())
        return cls(_family(ip), (str(ip),))

    def accepts(self, family: Family) -> bool:
        return self.family is None or self.family == family


class _Builder:
    """Accumulates sets, rules and notes while walking the config once."""

    def __init__(self, config: Config, catalogue: Catalogue) -> None:
        self.config = config
        self.catalogue = catalogue
        self.sets: dict[str, AddressSet] = {}
        self.rules: list[Rule] = []
        self.notes: list[str] = []

    def add_set(self, prefix: str, family: Family, addresses: tuple[str, ...],
                comment: str) -> AddressSet:
        found = AddressSet(_set_name(prefix, family), family, addresses, _clean(comment))
        self.sets[found.name] = found
        return found

    def add(self, rule: Rule) -> None:
        text = _clean(rule.comment)
        if len(text.encode()) > _COMMENT_MAX:
            text = text.encode()[: _COMMENT_MAX - 3].decode("utf-8", "ignore") + "..."
        self.rules.append(replace(rule, comment=text))

    # -- the pieces ------------------------------------------------------------------

    def listeners(self, endpoints: Iterable[Endpoint], key: str) -> list[Endpoint]:
        """Listeners that a rule can name (port 0 is ephemeral: noted, left out)."""
        out = []
        for ep in endpoints:
            if ep.port == 0:
                self.notes.append(f"{key} {ep}: port 0 (ephemeral) cannot be filtered by "
                                  "port; no rule for it")
            else:
                out.append(ep)
        return out

    def gateway_sets(self) -> list[tuple[EdgeConfig, AddressSet]]:
        """One set per configured edge and family, holding that edge's gateway IPs."""
        out = []
        for i, edge in enumerate(self.config.edges):
            ips = []
            for j, gw in enumerate(edge.gateways):
                if gw.is_ip:
                    ips.append(ipaddress.ip_address(gw.host))
                else:
                    self.notes.append(
                        f"edges[{i}].gateways[{j}] {gw.host!r} is a DNS name: not in these "
                        "rules; add the addresses it resolves to by hand")
            source = "catalogue" if edge.from_catalogue else "config"
            for family, addrs in _split_families(ips).items():
                out.append((edge, self.add_set(
                    f"gw_{edge.name}", family, addrs,
                    f"{edge.name} ({edge.region}) signalling gateways, from the {source}")))
        return out

    def inside_sets(self) -> list[AddressSet]:
        """``inside.allow`` plus the PBX's address when it is an IP (it sends BYEs)."""
        items: list[_Addr] = list(self.config.inside.allow)
        pbx = _ip_or_none(self.config.inside.pbx.host)
        if pbx is not None and not any(pbx in net for net in self.config.inside.allow):
            items.append(pbx)
        elif pbx is None:
            self.notes.append(f"inside.pbx {self.config.inside.pbx.host!r} is a DNS name: "
                              "allow its addresses in inside.allow for its BYEs to arrive")
        return [self.add_set("inside_allow", f, addrs, "inside.allow and the PBX (inside.pbx)")
                for f, addrs in _split_families(items).items()]

    def build_input(self) -> None:
        c = self.config
        self.add(Rule("input", "pass", "loopback untouched", loopback=True))
        self.add(Rule("input", "accept", "established/related flows", established=True))
        outside = self.listeners(_with_workers(c, c.outside.listen), "outside.listen")
        inside = self.listeners(_with_workers(c, c.inside.listen), "inside.listen")
        # Twilio picks the transport it sends over, so every configured gateway may reach
        # every outside listener on that listener's own transport and port.
        for edge, gw_set in self.gateway_sets():
            for ep in outside:
                target = _Target.of(ep)
                if target.accepts(gw_set.family):
                    self.add(Rule(
                        "input", "accept", f"SIP from {edge.name} to outside {ep}",
                        family=gw_set.family, saddr=gw_set.addresses, saddr_set=gw_set.name,
                        daddr=target.daddr, proto=_proto(ep.transport),
                        dport=(ep.port, ep.port)))
        inside_sets = self.inside_sets()
        if not inside_sets:
            self.notes.append("inside.allow is empty and inside.pbx is not an IP: nobody may "
                              "reach the inside listeners")
        for allow in inside_sets:
            for ep in inside:
                target = _Target.of(ep)
                if target.accepts(allow.family):
                    self.add(Rule(
                        "input", "accept", f"SIP from inside.allow to inside {ep}",
                        family=allow.family, saddr=allow.addresses, saddr_set=allow.name,
                        daddr=target.daddr, proto=_proto(ep.transport),
                        dport=(ep.port, ep.port)))
        # Drops come after every accept above: one socket may serve both sides. They come
        # before the media accept, so a packet from Twilio's media range cannot reach a SIP
        # listener through it.
        for ep in dict.fromkeys(outside + inside):
            target = _Target.of(ep)
            self.add(Rule(
                "input", "drop", f"other SIP to {ep}", family=target.family,
                daddr=target.daddr, proto=_proto(ep.transport), dport=(ep.port, ep.port),
                counter=COUNTER_SIP))
        self.build_admin()
        self.media("input")

    def build_admin(self) -> None:
        admin = self.config.admin.listen
        if admin is None or admin.port == 0:
            return
        if ipaddress.ip_address(admin.host).is_loopback:
            # Reachable from this host only, which `loopback untouched` leaves alone.
            return
        target = _Target.of(admin)
        port = (admin.port, admin.port)
        for family, addrs in _split_families(self.config.inside.allow).items():
            if target.accepts(family):
                allow = self.add_set("admin_allow", family, addrs, "inside.allow (admin API)")
                self.add(Rule(
                    "input", "accept", f"admin API {admin.hostport} from inside.allow",
                    family=family, saddr=addrs, saddr_set=allow.name, daddr=target.daddr,
                    proto="tcp", dport=port))
        self.add(Rule(
            "input", "drop", f"admin API {admin.hostport} from anyone else",
            family=target.family, daddr=target.daddr, proto="tcp", dport=port,
            counter=COUNTER_ADMIN))

    def media(self, chain: Chain) -> None:
        # Twilio's side of RTP only (catalogue); the PBX's own RTP ports are not named.
        net = str(self.catalogue.media_network)
        ports = self.catalogue.media_ports
        span = f"{net} UDP {ports[0]}-{ports[1]}"
        if chain != "output":
            self.add(Rule(chain, "accept", f"media from Twilio {span}",
                          family=4, saddr=(net,), proto="udp", sport=ports))
        if chain != "input":
            self.add(Rule(chain, "accept", f"media to Twilio {span}",
                          family=4, daddr=(net,), proto="udp", dport=ports))

    def build_output(self) -> None:
        self.add(Rule("output", "pass", "loopback untouched", loopback=True))
        self.add(Rule("output", "accept", "established/related flows", established=True))
        for edge in self.config.edges:
            # Gateways may carry their own ports in config; group them by (family, port).
            groups: dict[tuple[Family, int], list[str]] = {}
            for gw in edge.gateways:
                ip = _ip_or_none(gw.host)
                if ip is not None:
                    group = groups.setdefault((_family(ip), gw.endpoint.port), [])
                    if str(ip) not in group:
                        group.append(str(ip))
            for (family, port), addrs in groups.items():
                whole = self.sets.get(_set_name(f"gw_{edge.name}", family))
                ref = whole.name if whole is not None and whole.addresses == tuple(addrs) else None
                self.add(Rule(
                    "output", "accept", f"SIP to {edge.name} gateways ({edge.transport} {port})",
                    family=family, daddr=tuple(addrs), daddr_set=ref,
                    proto=_proto(edge.transport), dport=(port, port)))
        pbx = self.config.inside.pbx
        pbx_ip = _ip_or_none(pbx.host)
        if pbx_ip is not None:
            self.add(Rule(
                "output", "accept", f"SIP to the PBX {pbx}", family=_family(pbx_ip),
                daddr=(str(pbx_ip),), proto=_proto(pbx.transport), dport=(pbx.port, pbx.port)))
        self.media("output")

    def build_forward(self) -> None:
        # Media crosses this host only when it routes between the PBX and the link.
        self.add(Rule("forward", "accept", "established/related flows", established=True))
        self.media("forward")


def _ip_or_none(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def build_ruleset(config: Config, catalogue: Catalogue | None = None) -> Ruleset:
    """The rules for ``config``: the one model both output formats print.

    Args:
        config: a validated config (``load_config``).
        catalogue: the Twilio catalogue; the shipped one by default.

    Returns:
        The ruleset, with notes on what it could not express.
    """
    cat = catalogue if catalogue is not None else load_catalogue()
    b = _Builder(config, cat)
    b.build_input()
    b.build_output()
    b.build_forward()
    header = [f"sipedge {__version__} firewall rules for the private link to Twilio",
              f"config:    {_clean(config.path)}"]
    for i, edge in enumerate(config.edges):
        source = "catalogue" if edge.from_catalogue else "config"
        gws = ", ".join(str(gw) for gw in edge.gateways)
        header.append(f"{'edges:' if i == 0 else '':<10} {edge.name} ({edge.region}, "
                      f"{edge.transport}): {_clean(gws)} [from the {source}]")
    m0, m1 = cat.media_ports
    header += [
        f"catalogue: {cat.source}; checked {cat.source_date}",
        f"media:     {cat.media_network} UDP {m0}-{m1} (Twilio's side, since {cat.media_since})",
    ]
    if all(ipaddress.ip_address(ep.host).is_loopback for ep in config.listen):
        header.append("note:      every listener is on loopback (a lab): the loopback rule "
                      "passes all of it, so these rules only show what production would get")
    counters = ((COUNTER_SIP, "SIP to a listener from anyone else"),
                (COUNTER_ADMIN, "admin API from anyone else"))
    used = {r.counter for r in b.rules}
    return Ruleset(tuple(header), tuple(b.sets.values()),
                   tuple(c for c in counters if c[0] in used), tuple(b.rules), tuple(b.notes))


# ----------------------------------------------------------------------------------------
# Rendering

_MEDIA_TEXT = (
    "Media: the range and ports on the media line above are Twilio's (from the catalogue). The",
    "PBX's own RTP ports are the PBX's business and are not named here: the rules accept what",
    "comes from (or goes to) Twilio's media range on Twilio's ports, whatever the PBX's port.",
    "The forward chain matters only when this host routes media between the PBX and the link.",
)


def _comment_block(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        yield f"# {line}".rstrip()


def _header(ruleset: Ruleset, how: tuple[str, ...]) -> list[str]:
    out = list(_comment_block(ruleset.header))
    out.append("#")
    out += _comment_block(how)
    out.append("#")
    out += _comment_block(_MEDIA_TEXT)
    if ruleset.notes:
        out.append("#")
        out += _comment_block(f"not covered: {n}" for n in ruleset.notes)
    return out


def _nft_addrs(rule_addrs: tuple[str, ...], set_name: str | None) -> str:
    if set_name is not None:
        return f"@{set_name}"
    if len(rule_addrs) == 1:
        return rule_addrs[0]
    return "{ " + ", ".join(rule_addrs) + " }"


def _nft_ports(ports: tuple[int, int]) -> str:
    return str(ports[0]) if ports[0] == ports[1] else f"{ports[0]}-{ports[1]}"


def _nft_rule(rule: Rule) -> str:
    parts: list[str] = []
    if rule.loopback:
        parts.append('oif "lo"' if rule.chain == "output" else 'iif "lo"')
    if rule.established:
        parts.append("ct state established,related")
    ip = "ip" if rule.family == 4 else "ip6"
    if rule.family is not None and not rule.saddr and not rule.daddr:
        parts.append(f"meta nfproto ipv{rule.family}")
    if rule.saddr:
        parts.append(f"{ip} saddr {_nft_addrs(rule.saddr, rule.saddr_set)}")
    if rule.daddr:
        parts.append(f"{ip} daddr {_nft_addrs(rule.daddr, rule.daddr_set)}")
    if rule.proto is not None:
        if rule.sport is None and rule.dport is None:
            parts.append(f"meta l4proto {rule.proto}")
        if rule.sport is not None:
            parts.append(f"{rule.proto} sport {_nft_ports(rule.sport)}")
        if rule.dport is not None:
            parts.append(f"{rule.proto} dport {_nft_ports(rule.dport)}")
    if rule.counter is not None:
        parts.append(f'counter name "{rule.counter}"')
    parts.append("drop" if rule.verdict == "drop" else "accept")
    parts.append(f'comment "{rule.comment}"')
    return " ".join(parts)


def render_nftables(ruleset: Ruleset) -> str:
    """The ruleset as an ``nft -f`` file: one ``table inet sipedge``, replaced whole.

    Args:
        ruleset: from :func:`build_ruleset`.

    Returns:
        The file's text (check it with ``nft -c -f FILE``).
    """
    how = (
        f"A table of its own: table inet {TABLE}. Loading this file replaces that table and",
        "nothing else (there is no `flush ruleset`): the `table` and `delete table` lines before",
        "its definition make a load idempotent (one transaction: create if missing, delete,",
        "define again), so loading it twice leaves one copy.",
        "Every chain is policy accept: the only drops are packets to sipedge's own SIP listeners",
        "(and admin API) from anyone else, so loading it never closes the host. nftables runs",
        "every table's base chains: an accept here ends only this table's chain, while a drop",
        "anywhere is final; if another table drops by default, open these flows there too.",
        "Output is policy accept as well (sipedge also needs DNS and the like); its accepts list",
        "exactly what sipedge sends (gateways, PBX, media), for egress filtering to build on.",
        "  check:  nft -c -f FILE      load: nft -f FILE",
        f"  counts: nft list counters table inet {TABLE}",
        f"  remove: nft delete table inet {TABLE}",
    )
    out = _header(ruleset, how)
    out += ["", f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    for name, comment in ruleset.counters:
        out += [f"\tcounter {name} {{", f'\t\tcomment "{comment}"', "\t}"]
    for s in ruleset.sets:
        out += [f"\tset {s.name} {{", f"\t\ttype ipv{s.family}_addr"]
        if s.is_interval:
            out.append("\t\tflags interval")
        out += [f'\t\tcomment "{s.comment}"',
                "\t\telements = { " + ", ".join(s.addresses) + " }", "\t}"]
    for chain in _CHAINS:
        out += ["", f"\tchain {chain} {{",
                f"\t\ttype filter hook {chain} priority filter; policy accept;"]
        out += [f"\t\t{_nft_rule(r)}" for r in ruleset.rules if r.chain == chain]
        out.append("\t}")
    out.append("}")
    return "\n".join(out) + "\n"


def _ipt_ports(ports: tuple[int, int]) -> str:
    return str(ports[0]) if ports[0] == ports[1] else f"{ports[0]}:{ports[1]}"


def _ipt_rules(rule: Rule) -> Iterator[str]:
    """One ``-A`` line per source × destination (iptables has no sets without ipset)."""
    for src in rule.saddr or (None,):
        for dst in rule.daddr or (None,):
            parts = [f"-A {_IPTABLES_CHAIN[rule.chain]}"]
            if rule.loopback:
                parts.append("-o lo" if rule.chain == "output" else "-i lo")
            if src is not None:
                parts.append(f"-s {src}")
            if dst is not None:
                parts.append(f"-d {dst}")
            if rule.proto is not None:
                parts.append(f"-p {rule.proto}")
                if rule.sport is not None or rule.dport is not None:
                    parts.append(f"-m {rule.proto}")
                if rule.sport is not None:
                    parts.append(f"--sport {_ipt_ports(rule.sport)}")
                if rule.dport is not None:
                    parts.append(f"--dport {_ipt_ports(rule.dport)}")
            if rule.established:
                parts.append("-m conntrack --ctstate RELATED,ESTABLISHED")
            parts.append(f'-m comment --comment "{rule.comment}"')
            target = {"accept": "ACCEPT", "drop": "DROP", "pass": "RETURN"}[rule.verdict]
            parts.append(f"-j {target}")
            yield " ".join(parts)


def render_iptables(ruleset: Ruleset) -> str:
    """The IPv4 part of the ruleset as an ``iptables-restore --noflush`` file.

    Args:
        ruleset: from :func:`build_ruleset`.

    Returns:
        The file's text (check it with ``iptables-restore --test --noflush FILE``).
    """
    hooks = [f"  iptables -C {_IPTABLES_HOOK[c]} -j {_IPTABLES_CHAIN[c]} 2>/dev/null || "
             f"iptables -I {_IPTABLES_HOOK[c]} 1 -j {_IPTABLES_CHAIN[c]}" for c in _CHAINS]
    how = (
        "Chains of their own: SIPEDGE (input), SIPEDGE-OUTPUT, SIPEDGE-FORWARD, in the filter",
        "table. Load with --noflush (without it iptables-restore flushes the whole filter table);",
        "each load empties and refills these chains only. Then hook them in, once:",
        *hooks,
        "A packet no rule here matches returns to the calling chain, whose policy decides; the",
        "only DROPs are packets to sipedge's own SIP listeners (and admin API) from anyone else.",
        "An ACCEPT here is final for the filter table. Loopback RETURNs untouched. SIPEDGE-OUTPUT",
        "lists what sipedge sends (gateways, PBX, media), for egress filtering to build on.",
        "iptables counts every rule: the dropped SIP shows in iptables -L SIPEDGE -v -n.",
    )
    out = _header(ruleset, how)
    if ruleset.has_ipv6:
        v6 = sum(1 for r in ruleset.rules if r.family == 6)
        out += ["#", "# IPv6: this config has IPv6 addresses, and iptables-restore is IPv4 only:",
                f"# {v6} IPv6 rule(s) are not in this file. Write them for ip6tables-restore",
                "# (same chains, ip6tables) or use --format nftables (table inet covers both)."]
    out += ["", "*filter"]
    out += [f":{_IPTABLES_CHAIN[c]} - [0:0]" for c in _CHAINS]
    for chain in _CHAINS:
        for rule in ruleset.rules:
            if rule.chain == chain and rule.family != 6:
                out.extend(_ipt_rules(rule))
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def render(config: Config, fmt: str, catalogue: Catalogue | None = None) -> tuple[str, Ruleset]:
    """``sipedge firewall``: the rules for ``config`` in ``fmt``.

    Args:
        config: a validated config.
        fmt: one of :data:`FORMATS`.
        catalogue: the Twilio catalogue; the shipped one by default.

    Returns:
        The text and the ruleset it was printed from (for its notes).

    Raises:
        ValueError: ``fmt`` is not one of :data:`FORMATS`.
    """
    ruleset = build_ruleset(config, catalogue)
    if fmt == "nftables":
        return render_nftables(ruleset), ruleset
    if fmt == "iptables":
        return render_iptables(ruleset), ruleset
    raise ValueError(f"unknown firewall format {fmt!r}; expected one of {', '.join(FORMATS)}")
