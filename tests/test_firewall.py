"""`sipedge firewall`: rules from the config and the catalogue, checked with `nft -c`, never applied.

conf/sipedge.toml points at Twilio's real gateways: its rules are only ever *checked* here
(`nft -c -f` parses and validates against the kernel without committing anything).
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sipedge.catalogue import load as load_catalogue
from sipedge.cli import main
from sipedge.config import Config, load_config
from sipedge.firewall import build_ruleset, render, render_iptables, render_nftables

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["lab.toml", "sipedge.toml"]

# TLS on both sides, IPv6 listeners, allow list and gateways, a gateway with its own port,
# a DNS-name gateway, a wildcard listener and an admin listener off loopback.
TLS_V6 = """
[inside]
listen = ["udp:[2001:db8:1::2]:5060", "tls:10.0.0.2:5061"]
allow  = ["2001:db8:1::/64", "10.0.0.0/24"]
pbx    = "[2001:db8:9::10]:5061;transport=tls"

[outside]
listen = ["tls:172.16.0.2:5061", "tls:[2001:db8:2::2]:5061", "udp:0.0.0.0:5060"]
domain = "example"

[[edges]]
name      = "ashburn-ix"
transport = "tls"

[[edges]]
name      = "us2-ix"
transport = "tls"
gateways  = ["[2001:db8:3::64]", "[2001:db8:3::65]:5071", "67.213.136.64", "gw.example.net"]

[tls]
cafile   = "ca.pem"
certfile = "cert.pem"
keyfile  = "key.pem"

[admin]
listen = "10.0.0.2:9091"
"""


def _nft() -> str:
    found = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail("nft not found: `make tools` installs it (Debian package nftables)")
    return found


def nft_check(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`nft -c -f`: validate the ruleset without applying it (needs CAP_NET_ADMIN)."""
    path = tmp_path / "sipedge.nft"
    path.write_text(text)
    proc = subprocess.run([_nft(), "-c", "-f", str(path)], capture_output=True, text=True,
                          timeout=30, check=False)
    hint = (" (nft -c needs CAP_NET_ADMIN: run the tests as root)"
            if "Operation not permitted" in proc.stderr else "")
    assert proc.returncode == 0, f"nft -c -f rejected the rules{hint}:\n{proc.stderr}"
    return proc


@pytest.fixture
def tls_v6(tmp_path: Path) -> Config:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("placeholder: the loader checks only that it exists\n")
    conf = tmp_path / "tls-v6.toml"
    conf.write_text(TLS_V6)
    return load_config(conf)


def conf(name: str) -> Config:
    return load_config(ROOT / "conf" / name)


def rule_lines(text: str) -> list[str]:
    """The lines that are not comments (so header text cannot satisfy an assertion)."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


# -- nftables -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_nftables_output_passes_nft_check(name: str, tmp_path: Path) -> None:
    text, _ = render(conf(name), "nftables")
    nft_check(text, tmp_path)


def test_nftables_output_for_tls_and_ipv6_passes_nft_check(tls_v6: Config,
                                                           tmp_path: Path) -> None:
    text, _ = render(tls_v6, "nftables")
    nft_check(text, tmp_path)
    body = "\n".join(rule_lines(text))
    # TLS is TCP on 5061, both directions; IPv6 rules use ip6 matches.
    assert 'ip saddr @gw_ashburn_ix_v4 ip daddr 172.16.0.2 tcp dport 5061 accept' in body
    assert "ip daddr @gw_ashburn_ix_v4 tcp dport 5061 accept" in body
    assert "ip6 saddr @gw_san_jose_ix_v6 ip6 daddr 2001:db8:2::2 tcp dport 5061 accept" in body
    assert "ip6 daddr 2001:db8:3::65 tcp dport 5071 accept" in body  # its own port
    assert "udp dport 5060" in body and "tcp dport 5060" not in body  # only what is used
    # 0.0.0.0 takes IPv4 only: no IPv6 gateway is allowed to it, and its drop says ipv4.
    assert 'meta nfproto ipv4 udp dport 5060 counter name "sip_dropped" drop' in body
    assert "ip6 saddr @gw_san_jose_ix_v6 udp dport 5060" not in body


def test_nftables_is_a_table_of_its_own(tmp_path: Path) -> None:
    text, _ = render(conf("sipedge.toml"), "nftables")
    body = rule_lines(text)
    assert body[:3] == ["table inet sipedge", "delete table inet sipedge",
                        "table inet sipedge {"]
    assert not [line for line in body if "flush" in line]
    assert not [line for line in body if line.startswith("table") and "sipedge" not in line]
    # Every base chain is policy accept: loading the table never closes the host.
    assert text.count("policy accept;") == 3 and "policy drop" not in text


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("fmt", ["nftables", "iptables"])
def test_rules_name_every_configured_gateway_and_no_other_edge(name: str, fmt: str) -> None:
    config = conf(name)
    text, _ = render(config, fmt)
    body = "\n".join(rule_lines(text))
    configured = {gw.host for edge in config.edges for gw in edge.gateways}
    for host in configured:
        assert re.search(rf"(?<![\d.]){re.escape(host)}(?![\d.])", body), host
    others = [e for e in load_catalogue().edges if e.name not in {x.name for x in config.edges}]
    assert others
    for edge in others:
        assert edge.name not in text and edge.name.replace("-", "_") not in text
        for ip in edge.signalling_ips:
            assert str(ip) not in text, (edge.name, ip)


def test_production_rules_use_the_catalogue_gateways() -> None:
    text, _ = render(conf("sipedge.toml"), "nftables")
    cat = load_catalogue()
    for name in ("ashburn-ix", "san-jose-ix"):
        ips = ", ".join(str(ip) for ip in cat.edge(name).edge.signalling_ips)
        assert f"elements = {{ {ips} }}" in text
        set_name = f"gw_{name.replace('-', '_')}_v4"
        assert f"ip saddr @{set_name} ip daddr 172.16.0.2 udp dport 5060 accept" in text
        assert f"ip daddr @{set_name} udp dport 5060 accept" in text


@pytest.mark.parametrize("fmt", ["nftables", "iptables"])
def test_media_range_comes_from_the_catalogue(fmt: str) -> None:
    cat = load_catalogue()
    text, _ = render(conf("sipedge.toml"), fmt)
    body = "\n".join(rule_lines(text))
    net = str(cat.media_network)
    assert net == "168.86.128.0/18"
    lo, hi = cat.media_ports
    ports = f"{lo}-{hi}" if fmt == "nftables" else f"{lo}:{hi}"
    assert re.search(rf"{re.escape(net)} .*udp .*sport {ports} .*ACCEPT|"
                     rf"ip saddr {re.escape(net)} udp sport {ports} accept", body)
    assert re.search(rf"{re.escape(net)} .*udp .*dport {ports} .*ACCEPT|"
                     rf"ip daddr {re.escape(net)} udp dport {ports} accept", body)
    assert "PBX's own RTP" in text  # the comment says whose ports those are


@pytest.mark.parametrize("fmt", ["nftables", "iptables"])
def test_inside_listeners_only_from_inside_allow_and_pbx(fmt: str, tls_v6: Config) -> None:
    text, _ = render(tls_v6, fmt)
    body = "\n".join(rule_lines(text))
    assert "10.0.0.0/24" in body
    if fmt == "nftables":
        assert "elements = { 2001:db8:1::/64, 2001:db8:9::10 }" in body  # the PBX sends BYEs
        assert ("ip6 saddr @inside_allow_v6 ip6 daddr 2001:db8:1::2 udp dport 5060 accept"
                in body)
        assert "ip saddr @inside_allow_v4 ip daddr 10.0.0.2 tcp dport 5061 accept" in body


def test_pbx_inside_allow_is_not_listed_twice() -> None:
    # conf/sipedge.toml: pbx 10.0.0.10 is inside 10.0.0.0/24 already.
    text, _ = render(conf("sipedge.toml"), "nftables")
    assert "elements = { 10.0.0.0/24 }" in text


def test_other_sip_to_each_listener_is_dropped_and_counted() -> None:
    config = conf("sipedge.toml")
    text, _ = render(config, "nftables")
    assert "counter sip_dropped {" in text
    for ep in config.listen:
        proto = "udp" if ep.transport == "udp" else "tcp"
        rule = f'ip daddr {ep.host} {proto} dport {ep.port} counter name "sip_dropped" drop'
        assert rule in text
    lines = rule_lines(text)
    first_drop = next(i for i, line in enumerate(lines) if " drop " in line)
    last_sip_accept = max(i for i, line in enumerate(lines) if "SIP from" in line)
    media_in = next(i for i, line in enumerate(lines) if "media from Twilio" in line)
    # Accepts first (one socket may serve both sides), then drops, then media: a packet
    # from Twilio's media range cannot reach a SIP listener through the media rule.
    assert last_sip_accept < first_drop < media_in


def test_loopback_untouched_and_established_accepted() -> None:
    lines = rule_lines(render(conf("lab.toml"), "nftables")[0])
    chain_input = lines.index("\tchain input {")
    assert lines[chain_input + 2].strip().startswith('iif "lo" accept')
    assert lines[chain_input + 3].strip().startswith("ct state established,related accept")
    chain_output = lines.index("\tchain output {")
    assert lines[chain_output + 2].strip().startswith('oif "lo" accept')


def test_admin_off_loopback_only_from_inside_allow(tls_v6: Config) -> None:
    text, _ = render(tls_v6, "nftables")
    assert ("ip saddr @admin_allow_v4 ip daddr 10.0.0.2 tcp dport 9091 accept" in text)
    assert 'ip daddr 10.0.0.2 tcp dport 9091 counter name "admin_dropped" drop' in text
    assert "counter admin_dropped {" in text


def test_admin_on_loopback_needs_no_rule() -> None:
    text, _ = render(conf("sipedge.toml"), "nftables")  # admin 127.0.0.1:9091
    assert "dport 9091" not in text and "admin_dropped" not in text


def test_header_says_where_the_rules_came_from() -> None:
    config = conf("sipedge.toml")
    cat = load_catalogue()
    text, _ = render(config, "nftables")
    header = [line for line in text.splitlines() if line.startswith("#")]
    joined = "\n".join(header)
    assert f"config:    {config.path}" in joined
    assert "ashburn-ix (Virginia, udp)" in joined and "san-jose-ix (Oregon, udp)" in joined
    assert f"checked {cat.source_date}" in joined and cat.source in joined
    assert "table inet sipedge" in joined and "policy accept" in joined


def test_lab_header_says_the_rules_are_inert_on_loopback() -> None:
    text, _ = render(conf("lab.toml"), "nftables")
    assert "every listener is on loopback" in text
    assert "every listener is on loopback" not in render(conf("sipedge.toml"), "nftables")[0]


def test_nft_check_really_checks(tmp_path: Path) -> None:
    # The harness itself: a broken rule must fail `nft -c`, or the tests above prove nothing.
    text, _ = render(conf("lab.toml"), "nftables")
    with pytest.raises(AssertionError, match="nft -c -f rejected"):
        nft_check(text.replace("udp dport 5060", "udp dport 99999", 1), tmp_path)


def test_what_rules_cannot_express_is_noted(tls_v6: Config) -> None:
    ruleset = build_ruleset(tls_v6)
    assert any("gw.example.net" in n and "DNS name" in n for n in ruleset.notes)
    text = render_nftables(ruleset)
    assert "# not covered: edges[1].gateways[3] 'gw.example.net'" in text
    assert "gw.example.net" not in "\n".join(rule_lines(text))


def test_ephemeral_listener_port_is_noted(tmp_path: Path) -> None:
    conf_path = tmp_path / "eph.toml"
    conf_path.write_text((ROOT / "conf" / "lab.toml").read_text().replace(
        '"tcp:127.0.0.3:5060"]', '"tcp:127.0.0.3:0"]'))
    ruleset = build_ruleset(load_config(conf_path))
    assert any("port 0" in n for n in ruleset.notes)
    nft_check(render_nftables(ruleset), tmp_path)


def test_output_is_deterministic() -> None:
    config = conf("sipedge.toml")
    assert render(config, "nftables") == render(config, "nftables")


# -- iptables -----------------------------------------------------------------------------

_IPT_OPTION = re.compile(
    r"^-A (SIPEDGE(?:-OUTPUT|-FORWARD)?)"
    r"(?: -[io] lo)?"
    r"(?: -s (?P<s>[0-9./]+))?"
    r"(?: -d (?P<d>[0-9./]+))?"
    r"(?: -p (?P<p>udp|tcp)(?: -m (?P=p))?(?: --sport \d+(?::\d+)?)?(?: --dport \d+(?::\d+)?)?)?"
    r"(?: -m conntrack --ctstate RELATED,ESTABLISHED)?"
    r' -m comment --comment "[^"\n]{1,255}"'
    r" -j (ACCEPT|DROP|RETURN)$"
)


def check_iptables_structure(text: str) -> list[str]:
    """What `iptables-restore --test` would check about the text's shape, in Python.

    The Debian iptables package is deliberately not installed by `make tools` (nftables
    is the tool this project ships rules for); where it is present, the test below runs
    `iptables-restore --test` as well.
    """
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*filter" and lines[-1] == "COMMIT"
    declared = [line[1:].split()[0] for line in lines if line.startswith(":")]
    assert declared == ["SIPEDGE", "SIPEDGE-OUTPUT", "SIPEDGE-FORWARD"]
    assert all(line == ":" + c + " - [0:0]" for line, c in zip(lines[1:4], declared,
                                                               strict=True))
    rules = lines[4:-1]
    for line in rules:
        m = _IPT_OPTION.match(line)
        assert m, f"not an iptables-restore rule this generator writes: {line}"
        assert m.group(1) in declared
        for addr in (m.group("s"), m.group("d")):
            if addr is not None:
                assert ipaddress.ip_network(addr).version == 4, line
    return rules


@pytest.mark.parametrize("name", CONFIGS)
def test_iptables_output_is_iptables_restore_text(name: str) -> None:
    text, _ = render(conf(name), "iptables")
    rules = check_iptables_structure(text)
    assert "--noflush" in text and "iptables -I INPUT 1 -j SIPEDGE" in text
    assert any("-j DROP" in r and "--dport 5060" in r for r in rules)
    # No built-in chain is touched by the file itself; hooking in is left to the operator.
    assert not [r for r in rules if r.split()[1] in ("INPUT", "OUTPUT", "FORWARD")]


def test_iptables_output_leaves_ipv6_out_with_a_note(tls_v6: Config) -> None:
    text, _ = render(tls_v6, "iptables")
    check_iptables_structure(text)
    assert "# IPv6: this config has IPv6 addresses" in text
    assert "2001:db8" not in "\n".join(rule_lines(text))
    assert "-s 10.0.0.0/24 -d 10.0.0.2 -p tcp -m tcp --dport 5061" in text
    no_v6 = render(conf("sipedge.toml"), "iptables")[0]
    assert "# IPv6:" not in no_v6


@pytest.mark.parametrize("name", CONFIGS)
def test_iptables_restore_test_accepts_the_output(name: str, tmp_path: Path) -> None:
    restore = shutil.which("iptables-restore") or shutil.which(
        "iptables-restore", path="/usr/sbin:/sbin")
    assert restore is not None, "iptables-restore is missing: `make tools` installs it (iptables)"
    path = tmp_path / "sipedge.rules"
    path.write_text(render(conf(name), "iptables")[0])
    # --test: parse and check, never commit.
    proc = subprocess.run([restore, "--test", "--noflush", str(path)], capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr


def test_renderers_print_the_same_rules() -> None:
    ruleset = build_ruleset(conf("sipedge.toml"))
    v4_rules = [r for r in ruleset.rules if r.family != 6]
    ipt = render_iptables(ruleset)
    for rule in v4_rules:
        assert f'--comment "{rule.comment}"' in ipt
    nft = render_nftables(ruleset)
    for rule in ruleset.rules:
        assert f'comment "{rule.comment}"' in nft


# -- the command --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["nftables", "iptables"])
def test_cli_prints_the_rules(fmt: str, capsys: pytest.CaptureFixture[str],
                              tmp_path: Path) -> None:
    path = str(ROOT / "conf" / "lab.toml")
    assert main(["firewall", "--config", path, "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert out == render(load_config(path), fmt)[0]
    if fmt == "nftables":
        nft_check(out, tmp_path)


def test_cli_defaults_to_nftables_and_warns_about_notes(
        tls_v6: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["firewall", "--config", tls_v6.path]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == "}"
    assert "warning: edges[1].gateways[3] 'gw.example.net' is a DNS name" in captured.err


def test_cli_refuses_a_bad_config_with_exit_78(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text((ROOT / "conf" / "lab.toml").read_text().replace("ashburn-ix", "gll-ix"))
    assert main(["firewall", "--config", str(bad)]) == 78
    assert "media-only" in capsys.readouterr().err


def test_worker_ports_get_the_rules_of_their_listener(tmp_path: Path) -> None:
    # [process] workers = 2: each worker's own port (listener + 100 x (i + 1)) carries its
    # calls' answers and in-dialog requests, so it is let in (and guarded) like the listener.
    text = (ROOT / "conf" / "sipedge.toml").read_text().replace("\nworkers = 1", "\nworkers = 2")
    assert "\nworkers = 2" in text
    path = tmp_path / "sipedge.toml"
    path.write_text(text)
    config = load_config(path)
    rendered, _ = render(config, "nftables")
    nft_check(rendered, tmp_path)
    body = "\n".join(rule_lines(rendered))
    for ep in config.listen:
        proto = "udp" if ep.transport == "udp" else "tcp"
        for port in (ep.port, ep.port + 100, ep.port + 200):
            assert f'ip daddr {ep.host} {proto} dport {port} counter name "sip_dropped" drop' \
                in body, (ep, port)
    outside = config.outside.listen[0]
    proto = "udp" if outside.transport == "udp" else "tcp"
    assert (f"ip saddr @gw_ashburn_ix_v4 ip daddr {outside.host} {proto} dport "
            f"{outside.port + 200} accept") in body
