"""The loopback lab's addresses, and the sipedge config the demo runs on them.

The defaults are the lab of ``../shared/README.md`` and ``conf/lab.toml``: PBX caller
127.0.0.1 → sipedge inside 127.0.0.1:5080, outside 127.0.0.3:5060 → "Virginia" gateways
127.0.0.64–66 and "Oregon" 127.0.1.64–66 (port 5060); calls from the gateways → PBX
callee 127.0.0.10:5060; admin API 127.0.0.1:9091. Every address is a parameter (tests
use another block so they can run beside a lab in use), and every one must be on the
loopback network: the demo never sends a packet anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from sipedge.config import Config, parse_config
from sipedge.lab.agent import is_loopback
from sipedge.sip.address import Endpoint

__all__ = ["LabAddresses", "demo_config"]


#: The lab of ../shared/README.md (module constants: a frozen dataclass default).
LAB_INSIDE = Endpoint("udp", "127.0.0.1", 5080)
LAB_OUTSIDE = Endpoint("udp", "127.0.0.3", 5060)
LAB_PBX = Endpoint("udp", "127.0.0.10", 5060)
LAB_ADMIN = Endpoint("tcp", "127.0.0.1", 9091)


def _udp(host: str, port: int) -> Endpoint:
    return Endpoint("udp", host, port)


@dataclass(frozen=True, slots=True)
class LabAddresses:
    """Where sipedge and its simulated peers live.

    Attributes:
        inside: sipedge's PBX-side listener; the PBX places calls from its host.
        outside: sipedge's Twilio-side listener.
        virginia: the ashburn-ix gateways' hosts (three in the lab).
        oregon: the san-jose-ix gateways' hosts.
        gateway_port: the gateways' port.
        pbx: the PBX callee (``inside.pbx``): where calls from Twilio go.
        admin: sipedge's admin API (``/gateways``, ``/metrics``), or None.

    Raises:
        ValueError: an address is not on the loopback network, or a gateway list is empty.
    """

    inside: Endpoint = LAB_INSIDE
    outside: Endpoint = LAB_OUTSIDE
    virginia: tuple[str, ...] = ("127.0.0.64", "127.0.0.65", "127.0.0.66")
    oregon: tuple[str, ...] = ("127.0.1.64", "127.0.1.65", "127.0.1.66")
    gateway_port: int = 5060
    pbx: Endpoint = LAB_PBX
    admin: Endpoint | None = LAB_ADMIN

    def __post_init__(self) -> None:
        if not self.virginia or not self.oregon:
            raise ValueError("the lab needs at least one Virginia and one Oregon gateway")
        hosts = [self.inside.host, self.outside.host, self.pbx.host, *self.virginia,
                 *self.oregon]
        if self.admin is not None:
            hosts.append(self.admin.host)
        for host in hosts:
            if not is_loopback(host):
                raise ValueError(f"{host} is not a loopback address: the lab stays on "
                                 "127.0.0.0/8")

    def gateways(self) -> list[tuple[str, str, Endpoint]]:
        """``(edge, region, endpoint)`` of every gateway, Virginia first."""
        return ([("ashburn-ix", "Virginia", _udp(h, self.gateway_port)) for h in self.virginia]
                + [("san-jose-ix", "Oregon", _udp(h, self.gateway_port)) for h in self.oregon])


_TEMPLATE = """
[inside]
listen = ["udp:{inside}"]
allow  = ["{inside_host}/32"]
pbx    = "{pbx}"

[outside]
listen = ["udp:{outside}"]
domain = "example"

[[edges]]
name     = "ashburn-ix"
gateways = [{virginia}]

[[edges]]
name     = "san-jose-ix"
gateways = [{oregon}]

[probe]
interval_up_s   = 1
interval_down_s = 0.5
timeout_s       = 0.5
down_after      = 2
up_after        = 2

[failover]
no_provisional_timeout_s = {no_provisional_timeout_s:g}

[daemon]
drain_timeout_s = 1

[log]
level = "warning"
{admin}
"""


def demo_config(addresses: LabAddresses, *, no_provisional_timeout_s: float = 1.0) -> Config:
    """The config ``sipedge demo`` runs sipedge on (built in memory, validated as a file).

    Probing is faster than ``conf/lab.toml`` (a probe every 1 s while up, 0.5 s while
    down, two failures to go DOWN) so a failure shows within a second or two of a demo
    that lasts forty.

    Args:
        addresses: the lab's addresses.
        no_provisional_timeout_s: how long a black-holed gateway holds a call up.

    Returns:
        The validated configuration (``path`` is ``<sipedge demo>``).
    """
    def hosts(items: tuple[str, ...]) -> str:
        return ", ".join(f'"{h}:{addresses.gateway_port}"' for h in items)

    admin = "" if addresses.admin is None else (
        f'\n[admin]\nlisten = "{addresses.admin.hostport}"\n')
    text = _TEMPLATE.format(
        inside=addresses.inside.hostport, inside_host=addresses.inside.host,
        pbx=addresses.pbx.hostport, outside=addresses.outside.hostport,
        virginia=hosts(addresses.virginia), oregon=hosts(addresses.oregon),
        no_provisional_timeout_s=no_provisional_timeout_s, admin=admin)
    return parse_config(text, "<sipedge demo>")
