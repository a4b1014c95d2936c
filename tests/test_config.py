"""Config loading: the shipped files load; every kind of mistake is `FILE: key: reason`."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import fields
from pathlib import Path

import pytest
import trustme

from sipedge.config import (
    SECTIONS,
    Config,
    ConfigError,
    EdgeConfig,
    ProbeConfig,
    ProcessConfig,
    auto_workers,
    build_settings,
    load_config,
    parse_config,
    section_keys,
    summary,
    worker_endpoints,
)
from sipedge.proxy.settings import WorkerPlace
from sipedge.sip.address import Endpoint
from sipedge.sip.timers import Timers

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "conf" / "lab.toml"
EXAMPLE = ROOT / "conf" / "sipedge.toml"

BASE = """
[inside]
listen = ["udp:127.0.0.1:5080"]
allow = ["127.0.0.1/32"]
pbx = "127.0.0.10:5060"

[outside]
listen = ["udp:127.0.0.3:5060"]
domain = "example"
{outside_extra}

[[edges]]
name = "{edge}"
{edge_extra}
{rest}
"""


def cfg(
    *,
    edge: str = "ashburn-ix",
    edge_extra: str = 'gateways = ["127.0.0.64"]',
    outside_extra: str = "",
    rest: str = "",
    replace: tuple[str, str] | None = None,
    base_dir: Path | None = None,
) -> Config:
    text = BASE.format(edge=edge, edge_extra=edge_extra, outside_extra=outside_extra, rest=rest)
    if replace is not None:
        assert replace[0] in text
        text = text.replace(*replace)
    return parse_config(text, "test.toml", base_dir=base_dir)


def error(**kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        cfg(**kwargs)  # type: ignore[arg-type]
    return info.value


# -- the shipped files ---------------------------------------------------------------------


def test_lab_config_loads_as_the_issue_describes() -> None:
    c = load_config(LAB)
    assert c.inside.listen == (
        Endpoint("udp", "127.0.0.1", 5080),
        Endpoint("tcp", "127.0.0.1", 5080),
    )
    assert c.inside.allow == (ipaddress.ip_network("127.0.0.1/32"),)
    assert c.inside.pbx == Endpoint("udp", "127.0.0.10", 5060)
    assert c.outside.listen == (
        Endpoint("udp", "127.0.0.3", 5060),
        Endpoint("tcp", "127.0.0.3", 5060),
    )
    assert c.outside.domain == "example"
    assert [e.name for e in c.edges] == ["ashburn-ix", "san-jose-ix"]
    assert [g.endpoint for g in c.edges[0].gateways] == [
        Endpoint("udp", f"127.0.0.{i}", 5060) for i in (64, 65, 66)
    ]
    assert [g.host for g in c.edges[1].gateways] == [f"127.0.1.{i}" for i in (64, 65, 66)]
    assert c.edges[1].localized_domain == "example.sip.san-jose-ix.twilio.com"
    assert c.probe.interval_up_s < 15 and c.probe.timeout_s <= c.probe.interval_down_s
    assert c.admin.listen == Endpoint("tcp", "127.0.0.1", 9091)
    assert c.warnings == ()
    # Every address of the lab is loopback: nothing here can reach Twilio.
    for ep in c.listen + tuple(g.endpoint for e in c.edges for g in e.gateways):
        assert ipaddress.ip_address(ep.host).is_loopback


def test_example_config_loads_with_catalogue_gateways_and_defaults() -> None:
    c = load_config(EXAMPLE)
    ashburn, san_jose = c.edges
    assert ashburn.from_catalogue and san_jose.from_catalogue
    assert [g.endpoint for g in ashburn.gateways] == [
        Endpoint("udp", f"208.78.112.{i}", 5060) for i in (64, 65, 66)
    ]
    assert ashburn.localized_domain == "example.sip.ashburn-ix.twilio.com"
    assert c.probe.interval_up_s == 15 and c.probe.interval_down_s == 5
    assert c.probe.timeout_s == 2 and c.probe.down_after == 3 and c.probe.up_after == 2
    assert c.probe.healthy_codes == frozenset(range(200, 300))
    assert c.failover.no_provisional_timeout_s == 4
    assert c.failover.codes == {408, 500, 503, 504}
    assert (c.timers.t1, c.timers.t2, c.timers.t4) == (0.5, 4.0, 5.0)
    assert c.inbound.reject_unknown == "drop" and not c.inbound.strip_edge_params
    assert c.warnings == ()


def test_example_config_sets_every_default_explicitly() -> None:
    """conf/sipedge.toml documents every key: its values equal the built-in defaults."""
    example = load_config(EXAMPLE)
    minimal = parse_config(
        '[inside]\nlisten=["udp:10.0.0.2:5060"]\npbx="10.0.0.10"\n'
        '[outside]\nlisten=["udp:172.16.0.2:5060"]\ndomain="example"\n'
        '[[edges]]\nname="ashburn-ix"\n'
    )
    for section in ("probe", "failover", "timers", "inbound", "log"):
        assert getattr(example, section) == getattr(minimal, section), section
    assert minimal.admin.listen is None  # admin is off unless configured


def test_summary_names_listeners_edges_domains_and_warnings() -> None:
    text = summary(cfg(edge="us1-ix"))
    assert "udp:127.0.0.1:5080" in text and "udp:127.0.0.3:5060" in text
    assert "ashburn-ix (Virginia)" in text
    assert "example.sip.ashburn-ix.twilio.com" in text
    assert "udp:127.0.0.64:5060" in text
    assert "probe: every 15 s up / 5 s down" in text
    assert "failover: no provisional within 4 s, or final 408, 500, 503, 504" in text
    assert "warning: edges[0].name:" in text and "legacy" in text


def test_sni_map_gives_the_localized_domain_per_gateway() -> None:
    c = load_config(LAB)
    assert c.sni_map()[Endpoint("udp", "127.0.1.65", 5060)] == "example.sip.san-jose-ix.twilio.com"


# -- errors: FILE: key: reason ---------------------------------------------------------------


def test_error_text_is_file_key_reason() -> None:
    err = ConfigError("/etc/sipedge/sipedge.toml", "inside.allow[0]", "not a CIDR")
    assert str(err) == "/etc/sipedge/sipedge.toml: inside.allow[0]: not a CIDR"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert str(info.value).startswith(f"{tmp_path / 'nope.toml'}: (file): cannot read")


def test_toml_syntax_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[inside\n", "bad.toml")
    assert str(info.value).startswith("bad.toml: (syntax): ")


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"rest": "colour = 1"}, "edges[0].colour"),
        ({"rest": "[tracing]\nx = 1"}, "tracing"),
        ({"outside_extra": "domian = 'x'"}, "outside.domian"),
        ({"rest": "[probe]\ninterval_s = 3"}, "probe.interval_s"),
        ({"rest": "[failover]\ntimeout_s = 3"}, "failover.timeout_s"),
        ({"edge_extra": 'gateways = ["127.0.0.64"]\nweight = [1]'}, "edges[0].weight"),
    ],
)
def test_unknown_key_refused_at_every_level(kwargs: dict[str, str], key: str) -> None:
    err = error(**kwargs)
    assert err.key == key
    assert "unknown key" in err.reason
    assert str(err).startswith(f"test.toml: {key}: unknown key")


@pytest.mark.parametrize("cidr", ["10.0.0.1/24", "10.0.0.0/33", "not-a-net", "::1/129"])
def test_bad_cidr_refused(cidr: str) -> None:
    err = error(replace=('allow = ["127.0.0.1/32"]', f'allow = ["127.0.0.1/32", "{cidr}"]'))
    assert err.key == "inside.allow[1]"
    assert cidr in err.reason


@pytest.mark.parametrize(
    "listen",
    [
        "127.0.0.1:5080",  # no transport
        "sctp:127.0.0.1:5080",
        "udp:127.0.0.1:65536",
        "udp:127.0.0.1:http",
        "udp:localhost:5080",  # a listener needs an IP
        "udp:[::1",
        "udp:999.1.1.1:5060",
    ],
)
def test_bad_listen_refused(listen: str) -> None:
    err = error(replace=('listen = ["udp:127.0.0.1:5080"]', f'listen = ["{listen}"]'))
    assert err.key == "inside.listen[0]"


def test_listen_forms_accepted() -> None:
    c = cfg(
        replace=('listen = ["udp:127.0.0.1:5080"]', 'listen = ["udp:[::1]:5080", "TCP:127.0.0.1"]')
    )
    assert c.inside.listen == (Endpoint("udp", "::1", 5080), Endpoint("tcp", "127.0.0.1", 5060))


def test_duplicate_listen_refused() -> None:
    err = error(
        replace=(
            'listen = ["udp:127.0.0.1:5080"]',
            'listen = ["udp:127.0.0.1:5080", "udp:127.0.0.1:5080"]',
        )
    )
    assert (err.key, err.reason) == ("inside.listen", "duplicate entries")


@pytest.mark.parametrize(
    ("pbx", "expected"),
    [
        ("127.0.0.10", Endpoint("udp", "127.0.0.10", 5060)),
        ("127.0.0.10:5070;transport=tcp", Endpoint("tcp", "127.0.0.10", 5070)),
        ("pbx.example.com;transport=TLS", Endpoint("tls", "pbx.example.com", 5061)),
        ("[2001:db8::10]:5062", Endpoint("udp", "2001:db8::10", 5062)),
    ],
)
def test_pbx_forms(pbx: str, expected: Endpoint, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    rest = '[tls]\ncafile = "ca.pem"' if expected.transport == "tls" else ""
    c = cfg(replace=('pbx = "127.0.0.10:5060"', f'pbx = "{pbx}"'), rest=rest, base_dir=tmp_path)
    assert c.inside.pbx == expected


@pytest.mark.parametrize(
    "pbx", ["127.0.0.10:0", "127.0.0.10;lr", "bad_host!", "127.0.0.10;transport=sctp"]
)
def test_bad_pbx_refused(pbx: str) -> None:
    assert error(replace=('pbx = "127.0.0.10:5060"', f'pbx = "{pbx}"')).key == "inside.pbx"


def test_unknown_edge_refused() -> None:
    err = error(edge="mars-ix")
    assert err.key == "edges[0].name"
    assert "unknown edge" in err.reason
    assert str(err).startswith("test.toml: edges[0].name: unknown edge 'mars-ix'")


@pytest.mark.parametrize("edge", ["roaming", "gll-ix"])
def test_media_only_edge_refused(edge: str) -> None:
    err = error(edge=edge)
    assert err.key == "edges[0].name" and "media-only" in err.reason


def test_public_edge_name_refused() -> None:
    err = error(edge="ashburn")
    assert err.key == "edges[0].name" and "public" in err.reason


def test_legacy_edge_id_normalised_with_warning() -> None:
    c = cfg(edge="us1-ix", edge_extra="")
    assert c.edges[0].name == "ashburn-ix"
    assert c.edges[0].localized_domain == "example.sip.ashburn-ix.twilio.com"
    assert c.edges[0].from_catalogue
    assert len(c.warnings) == 1
    assert c.warnings[0].startswith("edges[0].name: ") and "us1-ix" in c.warnings[0]


def test_duplicate_edge_after_normalisation_refused() -> None:
    err = error(rest='[[edges]]\nname = "us1-ix"')
    assert err.key == "edges[1].name" and "twice" in err.reason


def test_edge_gateways_omitted_uses_catalogue_with_transport_port(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    c = cfg(
        edge="san-jose-ix",
        edge_extra='transport = "tls"',
        rest='[tls]\ncafile = "ca.pem"',
        base_dir=tmp_path,
    )
    assert [g.endpoint for g in c.edges[0].gateways] == [
        Endpoint("tls", f"67.213.136.{i}", 5061) for i in (64, 65, 66)
    ]
    assert c.tls.cafile == str(tmp_path / "ca.pem")
    assert c.sni_map()[Endpoint("tls", "67.213.136.64", 5061)] == (
        "example.sip.san-jose-ix.twilio.com"
    )


def test_gateway_forms_and_weights() -> None:
    c = cfg(
        edge_extra=(
            'gateways = ["127.0.0.64", "127.0.0.65:5070", "[::1]:5080", "gw.lab.test"]\n'
            "weights = [2, 1, 1, 1]"
        )
    )
    gws = c.edges[0].gateways
    assert [(g.host, g.port, g.weight) for g in gws] == [
        ("127.0.0.64", None, 2),
        ("127.0.0.65", 5070, 1),
        ("::1", 5080, 1),
        ("gw.lab.test", None, 1),
    ]
    assert gws[0].endpoint == Endpoint("udp", "127.0.0.64", 5060)
    assert not gws[3].is_ip and gws[2].is_ip


@pytest.mark.parametrize(
    ("edge_extra", "key"),
    [
        ('gateways = ["127.0.0.64:99999"]', "edges[0].gateways[0]"),
        ('gateways = ["not a host"]', "edges[0].gateways[0]"),
        ("gateways = []", "edges[0].gateways"),
        ('gateways = ["127.0.0.64", "127.0.0.64"]', "edges[0].gateways"),
        ('gateways = ["127.0.0.64"]\nweights = [1, 2]', "edges[0].weights"),
        ('gateways = ["127.0.0.64"]\nweights = [0]', "edges[0].weights[0]"),
        ('gateways = ["127.0.0.64"]\ntransport = "sctp"', "edges[0].transport"),
        ('gateways = "127.0.0.64"', "edges[0].gateways"),
    ],
)
def test_bad_edge_entries_refused(edge_extra: str, key: str) -> None:
    assert error(edge_extra=edge_extra).key == key


@pytest.mark.parametrize(
    "host",
    ["example.sip.twilio.com", "example.sip.de1.twilio.com", "example.sip.gll-ix.twilio.com"],
)
def test_public_twilio_gateway_refused_unless_allow_public(host: str) -> None:
    err = error(edge_extra=f'gateways = ["{host}"]')
    assert err.key == "edges[0].gateways[0]"
    assert "public" in err.reason and "allow_public" in err.reason
    c = cfg(edge_extra=f'gateways = ["{host}"]', outside_extra="allow_public = true")
    assert c.edges[0].gateways[0].host == host
    assert any("public" in w for w in c.warnings)


def test_interconnect_gateway_name_accepted() -> None:
    c = cfg(edge_extra='gateways = ["example.sip.ashburn-ix.twilio.com"]')
    assert c.warnings == ()


def test_gateway_of_another_edge_warns() -> None:
    c = cfg(edge_extra='gateways = ["67.213.136.64"]\n', rest="[probe]\ninterval_up_s = 15")
    assert any("san-jose-ix" in w for w in c.warnings)


@pytest.mark.parametrize("domain", ["example.com", "ex_ample", "-x", "", "x.sip.de1.twilio.com"])
def test_domain_must_be_one_dns_label(domain: str) -> None:
    err = error(replace=('domain = "example"', f'domain = "{domain}"'))
    assert err.key == "outside.domain"


def test_full_twilio_domain_reduced_with_warning() -> None:
    c = cfg(replace=('domain = "example"', 'domain = "Example.sip.twilio.com"'))
    assert c.outside.domain == "example"
    assert c.warnings and c.warnings[0].startswith("outside.domain:")


def test_tls_edge_without_cafile_refused() -> None:
    err = error(edge_extra='gateways = ["127.0.0.64"]\ntransport = "tls"')
    assert (err.key, str(err)) == (
        "tls.cafile",
        "test.toml: tls.cafile: TLS is used but no CA file is configured",
    )


def test_tls_listener_without_cafile_refused() -> None:
    err = error(replace=('listen = ["udp:127.0.0.3:5060"]', 'listen = ["tls:127.0.0.3:5061"]'))
    assert err.key == "tls.cafile"


def test_tls_listener_needs_certificate_files(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    listen = ('listen = ["udp:127.0.0.3:5060"]', 'listen = ["tls:127.0.0.3:5061"]')
    err = error(replace=listen, rest='[tls]\ncafile = "ca.pem"', base_dir=tmp_path)
    assert err.key == "tls.certfile"
    err = error(
        replace=listen,
        rest='[tls]\ncafile = "ca.pem"\ncertfile = "missing.pem"',
        base_dir=tmp_path,
    )
    assert err.key == "tls.certfile" and "no such file" in err.reason
    cert = ca.issue_cert("sipedge.lab.test")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "me.pem"))
    c = cfg(replace=listen, rest='[tls]\ncafile = "ca.pem"\ncertfile = "me.pem"', base_dir=tmp_path)
    assert c.uses_tls and c.tls.certfile == str(tmp_path / "me.pem")


def test_tls_section_unused_is_accepted_without_files() -> None:
    c = cfg(rest='[tls]\ncafile = "/nonexistent/ca.pem"')
    assert not c.uses_tls


@pytest.mark.parametrize(
    ("rest", "key"),
    [
        ("[probe]\ninterval_up_s = 0", "probe.interval_up_s"),
        ("[probe]\ntimeout_s = -1", "probe.timeout_s"),
        ("[probe]\ndown_after = 0", "probe.down_after"),
        ("[probe]\nup_after = true", "probe.up_after"),
        ("[probe]\nup_after = 1.5", "probe.up_after"),
        ('[probe]\nhealthy_codes = ["7xx"]', "probe.healthy_codes[0]"),
        ("[probe]\nhealthy_codes = []", "probe.healthy_codes"),
        ("[probe]\njitter_fraction = 0.9", "probe.jitter_fraction"),
        ("[failover]\ncodes = [200]", "failover.codes[0]"),
        ("[failover]\ncodes = ['503']", "failover.codes[0]"),
        ("[failover]\nno_provisional_timeout_s = 0", "failover.no_provisional_timeout_s"),
        ("[timers]\nt1_s = 5\nt2_s = 4", "timers.t2_s"),
        ("[timers]\nt4_s = 'five'", "timers.t4_s"),
        ('[admin]\nlisten = "localhost:9091"', "admin.listen"),
        ('[admin]\nlisten = "127.0.0.1:70000"', "admin.listen"),
        ('[log]\nlevel = "loud"', "log.level"),
        ('[inbound]\nreject_unknown = "404"', "inbound.reject_unknown"),
        ('[inbound]\nstrip_edge_params = "yes"', "inbound.strip_edge_params"),
    ],
)
def test_bad_values_refused(rest: str, key: str) -> None:
    err = error(rest=rest)
    assert err.key == key
    assert str(err).startswith(f"test.toml: {key}: ")


def test_section_that_is_not_a_table_refused() -> None:
    err = error(replace=("[inside]", "inbound = 3\n[inside]"))
    assert (err.key, err.reason) == ("inbound", "expected a table")


def test_probe_failover_and_inbound_values_parsed() -> None:
    c = cfg(
        rest=(
            '[probe]\nhealthy_codes = ["2xx", 404, "405"]\ninterval_up_s = 20\n'
            "[failover]\ncodes = [503]\nno_provisional_timeout_s = 2.5\n"
            "[inbound]\nreject_unknown = 403\nstrip_edge_params = true\n"
            '[log]\nlevel = "DEBUG"'
        )
    )
    assert c.probe.healthy_codes == frozenset(range(200, 300)) | {404, 405}
    assert c.probe.interval_up_s == 20.0
    assert c.failover.codes == {503} and c.failover.no_provisional_timeout_s == 2.5
    assert c.inbound.reject_unknown == "403" and c.inbound.strip_edge_params
    assert c.log.level == "debug"
    assert "healthy 2xx, 404, 405" in summary(c)


def test_fast_probing_of_twilio_warns() -> None:
    c = cfg(edge_extra="", rest="[probe]\ninterval_up_s = 2")
    assert any(w.startswith("probe.interval_up_s:") for w in c.warnings)
    assert not cfg(rest="[probe]\ninterval_up_s = 2").warnings  # loopback gateways: fine


@pytest.mark.parametrize("section", ["inside", "outside", "edges"])
def test_required_sections(section: str) -> None:
    text = BASE.format(edge="ashburn-ix", edge_extra="", outside_extra="", rest="")
    start = text.index(f"[{section}]") if section != "edges" else text.index("[[edges]]")
    with pytest.raises(ConfigError) as info:
        parse_config(text[:start], "t.toml")
    assert info.value.key in (section, "edges")


def test_config_is_frozen_and_reload_is_a_new_value() -> None:
    a, b = load_config(LAB), load_config(LAB)
    assert a == b and a is not b
    with pytest.raises(AttributeError):
        a.inside = b.inside  # type: ignore[misc]


# -- one source per key: the dataclasses are the schema (issue 11) -------------------------


def documented_keys(path: Path) -> dict[str, set[str]]:
    """Section → keys shown in an annotated file, set or commented out (``# key = …``)."""
    keys: dict[str, set[str]] = {}
    section: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        header = re.match(r"\[\[?(\w+)\]\]?", line)
        if header:
            section = header.group(1)
            keys.setdefault(section, set())
            continue
        key = re.match(r"#?\s*(\w+)\s*=", line)
        if key and section is not None:
            keys[section].add(key.group(1))
    return keys


def test_annotated_config_documents_exactly_the_dataclass_fields() -> None:
    documented = documented_keys(EXAMPLE)
    assert set(documented) == set(SECTIONS) == set(section_keys(Config))
    for section, cls in SECTIONS.items():
        assert documented[section] == set(section_keys(cls)), section


def test_section_keys_come_from_fields_with_metadata() -> None:
    assert list(section_keys(Timers)) == ["t1_s", "t2_s", "t4_s"]
    edge = section_keys(EdgeConfig)
    assert edge["weights"] == "gateways" and "region" not in edge  # "also" and a derived field
    assert "path" not in section_keys(Config) and "warnings" not in section_keys(Config)
    assert dict(section_keys(ProbeConfig)) == {f.name: f.name for f in fields(ProbeConfig)}


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_unknown_key_lists_the_allowed_keys_of_its_section(section: str) -> None:
    if section == "edges":
        err, where = error(edge_extra='gateways = ["127.0.0.64"]\nbogus = 1'), "edges[0]"
    elif section in ("inside", "outside"):
        err, where = error(replace=(f"[{section}]", f"[{section}]\nbogus = 1")), section
    else:
        err, where = error(rest=f"[{section}]\nbogus = 1"), section
    assert err.key == f"{where}.bogus"
    assert err.reason == f"unknown key; expected one of {', '.join(section_keys(SECTIONS[section]))}"


def test_absent_sections_and_keys_take_the_dataclass_defaults() -> None:
    c = cfg()
    for f in fields(Config):
        if f.name in SECTIONS and f.name not in ("inside", "outside", "edges"):
            assert getattr(c, f.name) == SECTIONS[f.name](), f.name
    assert c.outside.allow_public is False and c.edges[0].transport == "udp"
    assert c.edges[0].gateways[0].weight == 1


def test_example_config_sets_the_default_of_every_defaulted_section() -> None:
    example = load_config(EXAMPLE)
    for f in fields(Config):
        if f.name in SECTIONS and f.name not in ("inside", "outside", "edges", "admin"):
            assert getattr(example, f.name) == SECTIONS[f.name](), f.name


def test_a_field_without_a_parser_is_a_programming_error_not_an_ignored_key() -> None:
    from sipedge.config import _Loader, _Table

    loader = _Loader("t.toml", ROOT)
    with pytest.raises(TypeError, match=r"ProbeConfig: no parser for \['up_after'\]"):
        _Table(loader, {}, "probe", ProbeConfig).build(
            **{f.name: loader.positive for f in fields(ProbeConfig) if f.name != "up_after"}
        )


# -- [daemon] and [log] format (issue 11) ------------------------------------------------------


def test_daemon_and_log_format_defaults() -> None:
    c = cfg()
    assert c.daemon.drain_timeout_s == 30.0
    assert c.log.format == "text"
    assert "log: level info, format text" in summary(c)
    assert "daemon: drain_timeout_s 30" in summary(c)


def test_daemon_and_log_format_values_parsed() -> None:
    c = cfg(rest='[daemon]\ndrain_timeout_s = 5\n[log]\nformat = "JSON"')
    assert c.daemon.drain_timeout_s == 5.0 and isinstance(c.daemon.drain_timeout_s, float)
    assert c.log.format == "json"
    assert "daemon: drain_timeout_s 5" in summary(c)


@pytest.mark.parametrize(
    ("rest", "key", "reason"),
    [
        ("[daemon]\ndrain_timeout_s = 0", "daemon.drain_timeout_s", "must be positive, got 0.0"),
        ("[daemon]\ndrain_timeout_s = -3", "daemon.drain_timeout_s", "must be positive, got -3.0"),
        ("[daemon]\ndrain_timeout_s = '30'", "daemon.drain_timeout_s", "expected a number, got '30'"),
        ("[daemon]\ndrain_timeout_s = true", "daemon.drain_timeout_s", "expected a number, got True"),
        ('[log]\nformat = "xml"', "log.format", "'xml': expected one of text, json"),
        ("[log]\nformat = 1", "log.format", "expected a string, got 1"),
    ],
)
def test_daemon_and_log_format_bad_values_refused(rest: str, key: str, reason: str) -> None:
    err = error(rest=rest)
    assert (err.key, err.reason) == (key, reason)
    assert str(err) == f"test.toml: {key}: {reason}"


def test_daemon_unknown_key_refused() -> None:
    err = error(rest="[daemon]\ndrain_timeout = 3")
    assert str(err) == (
        "test.toml: daemon.drain_timeout: unknown key; expected one of drain_timeout_s"
    )


# -- [process]: worker processes (issue 14) ----------------------------------------------------

INSIDE_UDP = Endpoint("udp", "127.0.0.1", 5080)
OUTSIDE_UDP = Endpoint("udp", "127.0.0.3", 5060)


def workers(n: int | str, stride: int = 100, **kwargs: object) -> Config:
    value = f'"{n}"' if isinstance(n, str) else n
    rest = f"[process]\nworkers = {value}\nport_stride = {stride}\n" + str(kwargs.pop("rest", ""))
    return cfg(rest=rest, **kwargs)  # type: ignore[arg-type]


def process_error(n: int | str, stride: int = 100, **kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        workers(n, stride, **kwargs)
    return info.value


def test_process_defaults_to_one_process() -> None:
    c = cfg()
    assert c.process == ProcessConfig() == ProcessConfig(workers=1, port_stride=100)
    assert "process: 1 worker (a single process; port_stride 100 unused)" in summary(c)
    assert worker_endpoints(c, 0) == {}
    settings = build_settings(c, WorkerPlace(0, 1))
    assert settings.own == {} and settings.siblings == ()
    assert settings.limits == build_settings(c).limits


def test_process_workers_auto_is_one_per_usable_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 5, 7, 9})
    assert auto_workers() == 6
    assert workers("auto").process.workers == 6
    assert workers(" AUTO ").process.workers == 6
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(200)))
    assert workers("auto").process.workers == 64  # the most the key allows
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set())
    assert auto_workers() == 1


def test_process_values_parsed() -> None:
    c = workers(64, 1)
    assert (c.process.workers, c.process.port_stride) == (64, 1)
    assert workers(2, 30000).process.port_stride == 30000


@pytest.mark.parametrize(("rest", "key", "reason"), [
    ("workers = 0", "process.workers", '0: expected 1 to 64, or "auto"'),
    ("workers = 65", "process.workers", '65: expected 1 to 64, or "auto"'),
    ('workers = "many"', "process.workers", "expected \"auto\" or an integer, got 'many'"),
    ("workers = true", "process.workers", 'expected "auto" or an integer, got True'),
    ("workers = 2.0", "process.workers", 'expected "auto" or an integer, got 2.0'),
    ("port_stride = 0", "process.port_stride", "0: expected 1 to 30000"),
    ("port_stride = 30001", "process.port_stride", "30001: expected 1 to 30000"),
    ('port_stride = "100"', "process.port_stride", "expected an integer, got '100'"),
    ("port_stride = true", "process.port_stride", "expected an integer, got True"),
    ("worker = 2", "process.worker", "unknown key; expected one of workers, port_stride"),
])
def test_process_bad_values_refused(rest: str, key: str, reason: str) -> None:
    err = error(rest="[process]\n" + rest)
    assert (err.key, err.reason) == (key, reason)
    assert str(err) == f"test.toml: {key}: {reason}"


def test_process_workers_need_fixed_listener_ports() -> None:
    port0 = ('listen = ["udp:127.0.0.3:5060"]', 'listen = ["udp:127.0.0.3:0"]')
    assert cfg(replace=port0).outside.listen[0].port == 0  # fine in one process
    assert workers(1, replace=port0).process.workers == 1
    err = process_error(2, replace=port0)
    assert err.key == "process.workers"
    assert err.reason == ("2 workers need fixed listener ports (worker ports derive from "
                          "them): udp:127.0.0.3:0 has port 0")


def test_process_worker_port_above_65535_refused() -> None:
    high = ('listen = ["udp:127.0.0.3:5060"]', 'listen = ["udp:127.0.0.3:65400"]')
    assert workers(1, replace=high).process.workers == 1  # no worker endpoints
    assert workers(2, 60, replace=high).process.workers == 2  # 65460, 65520
    err = process_error(2, 100, replace=high)
    assert err.key == "process.port_stride"
    assert err.reason == ("worker 1's port for udp:127.0.0.3:65400 would be 65600, above "
                          "65535: fewer workers, a smaller port_stride or a lower listener port")


def test_process_worker_endpoint_colliding_with_a_listener_refused() -> None:
    two = ('listen = ["udp:127.0.0.3:5060"]', 'listen = ["udp:127.0.0.3:5060", "udp:127.0.0.3:5260"]')
    assert workers(1, replace=two).process.workers == 1
    err = process_error(2, replace=two)
    assert err.key == "process.port_stride"
    assert err.reason == ("worker 1's udp:127.0.0.3:5260 (for udp:127.0.0.3:5060) collides with "
                          "listener udp:127.0.0.3:5260: choose another port_stride")
    assert workers(2, 50, replace=two).process.port_stride == 50  # 5110, 5160 / 5310, 5360


def test_process_worker_endpoint_colliding_with_the_admin_listener_refused() -> None:
    rest = '[admin]\nlisten = "127.0.0.1:5180"'
    udp_only = workers(2, rest=rest)  # udp:127.0.0.1:5180 is another port space
    assert worker_endpoints(udp_only, 0)[INSIDE_UDP] == Endpoint("udp", "127.0.0.1", 5180)
    tcp = ('listen = ["udp:127.0.0.1:5080"]', 'listen = ["udp:127.0.0.1:5080", "tcp:127.0.0.1:5080"]')
    err = process_error(2, rest=rest, replace=tcp)
    assert (err.key, err.reason) == ("process.port_stride",
                                     "worker 0's tcp:127.0.0.1:5180 (for tcp:127.0.0.1:5080) collides "
                                     "with admin.listen 127.0.0.1:5180: choose another port_stride")


def test_process_tcp_and_tls_share_a_port_space(tmp_path: Path) -> None:
    for name in ("ca.pem", "me.pem"):
        (tmp_path / name).write_text("not parsed by the loader")
    tls = ('listen = ["udp:127.0.0.3:5060"]', 'listen = ["tcp:127.0.0.3:5060", "tls:127.0.0.3:5160"]')
    rest = '[tls]\ncafile = "ca.pem"\ncertfile = "me.pem"'
    err = process_error(2, replace=tls, rest=rest, base_dir=tmp_path)
    assert err.key == "process.port_stride"
    assert err.reason.startswith("worker 0's tcp:127.0.0.3:5160 (for tcp:127.0.0.3:5060) collides "
                                 "with listener tls:127.0.0.3:5160")
    udp = ('listen = ["udp:127.0.0.3:5060"]', 'listen = ["udp:127.0.0.3:5060", "tcp:127.0.0.3:5160"]')
    assert workers(2, replace=udp).process.workers == 2  # udp 5160 vs tcp 5160: no clash


def test_process_unspecified_address_collides_with_every_host_of_its_family() -> None:
    # The two listeners share port 5060 (the wildcard covers 127.0.0.3): not [process]'s
    # to judge; their worker endpoints would clash.
    wild = ('listen = ["udp:127.0.0.1:5080"]', 'listen = ["udp:0.0.0.0:5060"]')
    err = process_error(2, replace=wild)
    assert err.key == "process.port_stride"
    assert err.reason == ("worker 0's udp:127.0.0.3:5160 (for udp:127.0.0.3:5060) collides with "
                          "worker 0's udp:0.0.0.0:5160 (for udp:0.0.0.0:5060): choose another "
                          "port_stride")
    # Another family is another socket.
    v6 = ('listen = ["udp:127.0.0.1:5080"]', 'listen = ["udp:[::]:5060"]')
    c = workers(2, replace=v6)
    assert worker_endpoints(c, 1)[Endpoint("udp", "::", 5060)] == Endpoint("udp", "::", 5260)


def test_worker_endpoints_for_every_listener() -> None:
    lab = load_config(LAB)
    c = parse_config(LAB.read_text() + "\n[process]\nworkers = 3\nport_stride = 1000\n",
                     "lab.toml", base_dir=LAB.parent)
    assert c.listen == lab.listen
    for index in range(3):
        own = worker_endpoints(c, index)
        assert list(own) == list(c.listen)
        for shared, mine in own.items():
            assert (mine.transport, mine.host) == (shared.transport, shared.host)
            assert mine.port == shared.port + 1000 * (index + 1)
    with pytest.raises(ValueError, match="workers 0 to 2"):
        worker_endpoints(c, 3)
    with pytest.raises(ValueError):
        worker_endpoints(c, -1)


def test_build_settings_for_a_worker_names_its_endpoints_and_its_siblings() -> None:
    c = workers(2)
    single = build_settings(c)
    assert single.own == {} and single.siblings == ()
    first, second = build_settings(c, WorkerPlace(0, 2)), build_settings(c, WorkerPlace(1, 2))
    assert first.own == {INSIDE_UDP: Endpoint("udp", "127.0.0.1", 5180),
                         OUTSIDE_UDP: Endpoint("udp", "127.0.0.3", 5160)}
    assert second.own == {INSIDE_UDP: Endpoint("udp", "127.0.0.1", 5280),
                          OUTSIDE_UDP: Endpoint("udp", "127.0.0.3", 5260)}
    assert first.siblings == second.siblings == (*first.own.values(), *second.own.values())
    assert (first.inside, first.outside) == (single.inside, single.outside)  # still shared
    with pytest.raises(ValueError, match="workers = 2"):
        build_settings(c, WorkerPlace(0, 3))


def test_worker_place_is_validated() -> None:
    for index, count in ((0, 0), (2, 2), (-1, 2)):
        with pytest.raises(ValueError):
            WorkerPlace(index, count)


def test_build_settings_divides_admission_limits_among_workers() -> None:
    whole = build_settings(workers(1)).limits
    four = build_settings(workers(4), WorkerPlace(3, 4)).limits
    assert (four.source_rate_per_s, four.source_burst) == (500.0, 1000.0)
    assert (four.call_rate_per_s, four.call_burst) == (250.0, 500.0)
    # Divided exactly: 4 x ceil(7.5) = 32 calls/s would pass Twilio's 30 per gateway.
    assert four.gateway_calls_per_s == 7.5
    assert four.max_transactions == 25000 and isinstance(four.max_transactions, int)
    # Every worker sees every source; bans and emergency numbers are not shares.
    assert four.max_sources == whole.max_sources == 10000
    assert (four.ban_s, four.emergency_numbers) == (whole.ban_s, whole.emergency_numbers)
    for value in (four.source_rate_per_s, four.source_burst, four.call_rate_per_s,
                  four.call_burst, four.gateway_calls_per_s):
        assert isinstance(value, float)


def test_divided_limits_round_bursts_up_and_never_reach_zero() -> None:
    rest = ("[limits]\nsource_rate_per_s = 3\nsource_burst = 5\ncall_rate_per_s = 2\n"
            "call_burst = 3\ngateway_calls_per_s = 30\nmax_transactions = 7\n")
    limits = build_settings(workers(64, 1, rest=rest), WorkerPlace(0, 64)).limits
    assert (limits.source_rate_per_s, limits.source_burst) == (1.0, 1.0)
    assert (limits.call_rate_per_s, limits.call_burst) == (1.0, 1.0)
    assert limits.gateway_calls_per_s == 1.0 and limits.max_transactions == 1
    three = build_settings(workers(3, rest=rest), WorkerPlace(0, 3)).limits
    assert (three.source_rate_per_s, three.source_burst) == (1.0, 2.0)  # 5 / 3 rounded up
    assert (three.call_burst, three.max_transactions) == (1.0, 3)
    assert three.gateway_calls_per_s == 10.0


def test_divided_limits_keep_zero_as_off() -> None:
    rest = "[limits]\ncall_rate_per_s = 0\ngateway_calls_per_s = 0\n"
    limits = build_settings(workers(4, rest=rest), WorkerPlace(1, 4)).limits
    assert limits.call_rate_per_s == 0 and limits.gateway_calls_per_s == 0


def test_summary_lists_each_workers_endpoints_and_limits() -> None:
    text = summary(workers(2))
    assert ("process: 2 workers sharing the listeners, each with its own endpoints at listener "
            "port + 100 × (worker + 1); worker 0 probes") in text
    assert "  worker 0: udp:127.0.0.1:5180, udp:127.0.0.3:5160" in text
    assert "  worker 1: udp:127.0.0.1:5280, udp:127.0.0.3:5260" in text
    assert ("  limits per worker: source_rate_per_s 1000, source_burst 2000, call_rate_per_s 500, "
            "call_burst 1000, gateway_calls_per_s 15, max_transactions 50000") in text
