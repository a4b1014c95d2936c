"""`sipedge twiml`: <Dial><Sip> TwiML for an Interconnect edge, and the <Sip> URI linter."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from sipedge.catalogue import load as load_catalogue
from sipedge.cli import EX_LINT, EX_USAGE, main
from sipedge.sip.uri import parse_uri
from sipedge.twiml import TwimlError, dial_sip, escape_user, lint_sip_uri


def sip_text(xml: str) -> str:
    root = ET.fromstring(xml.encode("utf-8"))  # bytes: the declaration names the encoding
    assert root.tag == "Response"
    (dial,) = list(root)
    assert dial.tag == "Dial"
    (sip,) = list(dial)
    assert sip.tag == "Sip" and not list(sip)
    assert sip.text is not None
    return sip.text


# -- dial_sip -----------------------------------------------------------------------------


def test_dial_sip_is_valid_xml_with_the_exact_uri() -> None:
    twiml = dial_sip("alice", "pbx.example.com", "ashburn-ix")
    assert sip_text(twiml.xml) == "sip:alice@pbx.example.com;edge=ashburn-ix"
    assert twiml.uri == "sip:alice@pbx.example.com;edge=ashburn-ix"
    assert twiml.note is None


def test_dial_sip_is_pretty_printed_with_a_double_quoted_declaration() -> None:
    assert dial_sip("+14155550100", "203.0.113.5", "london-ix").xml == (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<Response>\n"
        "  <Dial>\n"
        "    <Sip>sip:+14155550100@203.0.113.5;edge=london-ix</Sip>\n"
        "  </Dial>\n"
        "</Response>\n"
    )


def test_dial_sip_escapes_xml_and_the_user_part() -> None:
    twiml = dial_sip("a&b <c>", "pbx.example.com", "ashburn-ix")
    # '&' is legal in a SIP user (RFC 3261 §25.1 user-unreserved) and escaped for XML;
    # the blank and angle brackets are not legal there and are percent-encoded.
    assert "<Sip>sip:a&amp;b%20%3Cc%3E@pbx.example.com;edge=ashburn-ix</Sip>" in twiml.xml
    assert sip_text(twiml.xml) == "sip:a&b%20%3Cc%3E@pbx.example.com;edge=ashburn-ix"
    assert parse_uri(twiml.uri.encode()).user == b"a&b%20%3Cc%3E"


def test_escape_user_keeps_what_rfc_3261_allows() -> None:
    assert escape_user("+1-415_555.0100!~*'()&=+$,;?/") == "+1-415_555.0100!~*'()&=+$,;?/"
    assert escape_user("ä@%") == "%C3%A4%40%25"


def test_dial_sip_brackets_a_bare_ipv6_host_and_keeps_a_port() -> None:
    assert dial_sip("u", "2001:db8::5", "ashburn-ix").uri == "sip:u@[2001:db8::5];edge=ashburn-ix"
    assert dial_sip("u", "pbx:5070", "ashburn-ix").uri == "sip:u@pbx:5070;edge=ashburn-ix"


def test_dial_sip_normalises_a_legacy_edge_with_a_note() -> None:
    twiml = dial_sip("alice", "pbx.example.com", "US1-IX")
    assert sip_text(twiml.xml).endswith(";edge=ashburn-ix")
    assert twiml.note is not None and "legacy" in twiml.note and "ashburn-ix" in twiml.note


@pytest.mark.parametrize(
    ("edge", "reason"),
    [
        ("ashburn", "public Twilio edge"),
        ("de1", "public Twilio edge"),
        ("roaming", "media-only"),
        ("gll-ix", "media-only"),
        ("mars-ix", "unknown edge"),
    ],
)
def test_dial_sip_refuses_edges_that_are_not_interconnect_sip_edges(edge: str,
                                                                    reason: str) -> None:
    with pytest.raises(TwimlError, match=reason):
        dial_sip("alice", "pbx.example.com", edge)


@pytest.mark.parametrize(
    "host", ["pbx;transport=tcp", "pbx?X-A=1", "a@b", "", "pbx:99999", "exämple.com", "a b"])
def test_dial_sip_refuses_a_host_that_is_not_host_port_alone(host: str) -> None:
    with pytest.raises(TwimlError, match="host"):
        dial_sip("alice", host, "ashburn-ix")


def test_dial_sip_refuses_an_empty_user() -> None:
    with pytest.raises(TwimlError, match="user"):
        dial_sip("", "pbx.example.com", "ashburn-ix")


@pytest.mark.parametrize("edge", load_catalogue().edge_names)
def test_dial_sip_accepts_every_interconnect_edge(edge: str) -> None:
    assert sip_text(dial_sip("u", "h", edge).xml) == f"sip:u@h;edge={edge}"


# -- lint_sip_uri -------------------------------------------------------------------------


def test_lint_accepts_a_good_uri() -> None:
    lint = lint_sip_uri("sip:alice@pbx.example.com;edge=ashburn-ix")
    assert lint.ok and lint.findings == () and lint.suggestion is None


def test_lint_ignores_the_blanks_of_an_indented_sip_element() -> None:
    assert lint_sip_uri("\n    sip:alice@pbx.example.com;edge=ashburn-ix\n  ").ok


def test_lint_maps_a_tnx_edge_id_to_edge() -> None:
    lint = lint_sip_uri("sip:alice@pbx.example.com;tnx=us1-ix")
    assert not lint.ok
    (finding,) = lint.findings
    assert finding.severity == "problem"
    assert "deprecated" in finding.text and "edge=ashburn-ix" in finding.text
    assert lint.suggestion == "sip:alice@pbx.example.com;edge=ashburn-ix"


def test_lint_keeps_other_parameters_and_headers_in_place() -> None:
    lint = lint_sip_uri("sip:alice@pbx.example.com;TNX=ie1-ix;transport=tcp?X-A=1")
    assert lint.suggestion == "sip:alice@pbx.example.com;edge=london-ix;transport=tcp?X-A=1"


def test_lint_cannot_map_a_tnx_connection_sid_without_edge() -> None:
    uri = "sip:alice@pbx.example.com;tnx=IX0123456789abcdef0123456789abcdef"
    lint = lint_sip_uri(uri)
    assert not lint.ok and lint.suggestion is None
    assert "connection SID" in lint.findings[0].text and "--edge" in lint.findings[0].text
    with_edge = lint_sip_uri(uri, edge="us2-ix")
    assert not with_edge.ok
    assert with_edge.suggestion == "sip:alice@pbx.example.com;edge=san-jose-ix"


@pytest.mark.parametrize(
    ("edge", "reason", "suggestion"),
    [
        ("ashburn", "public Twilio edge", "sip:a@h;edge=ashburn-ix"),
        ("gll-ix", "media-only", None),
        ("roaming", "media-only", None),
        ("nowhere", "unknown edge", None),
    ],
)
def test_lint_reports_an_edge_that_is_not_an_interconnect_edge(
        edge: str, reason: str, suggestion: str | None) -> None:
    lint = lint_sip_uri(f"sip:a@h;edge={edge}")
    assert not lint.ok
    assert reason in lint.findings[0].text
    assert lint.suggestion == suggestion


def test_lint_notes_a_legacy_edge_id_but_passes() -> None:
    lint = lint_sip_uri("sip:a@h;edge=us2-ix;lr")
    assert lint.ok
    (finding,) = lint.findings
    assert finding.severity == "note" and "san-jose-ix" in finding.text
    assert lint.suggestion == "sip:a@h;edge=san-jose-ix;lr"


def test_lint_reports_a_uri_without_edge() -> None:
    lint = lint_sip_uri("sip:a@h")
    assert not lint.ok and "no edge=" in lint.findings[0].text and lint.suggestion is None
    assert lint_sip_uri("sip:a@h", edge="tokyo-ix").suggestion == "sip:a@h;edge=tokyo-ix"


def test_lint_reports_tnx_next_to_edge_and_a_disagreement() -> None:
    lint = lint_sip_uri("sip:a@h;edge=ashburn-ix;tnx=us2-ix")
    texts = [f.text for f in lint.findings]
    assert any("deprecated" in t for t in texts) and any("disagree" in t for t in texts)
    assert lint.suggestion == "sip:a@h;edge=ashburn-ix"


def test_lint_reports_an_edge_given_twice() -> None:
    lint = lint_sip_uri("sip:a@h;edge=ashburn-ix;edge=london-ix")
    assert not lint.ok and "more than once" in lint.findings[0].text
    assert lint.suggestion == "sip:a@h;edge=ashburn-ix"


@pytest.mark.parametrize(("uri", "reason"), [
    ("sip:alice@pbx example.com", "not a SIP URI"),
    ("alice@pbx.example.com", "not a SIP URI"),
    ("tel:+14155550100", "sip: or sips:"),
])
def test_lint_reports_what_is_not_a_sip_uri(uri: str, reason: str) -> None:
    lint = lint_sip_uri(uri)
    assert not lint.ok and reason in lint.findings[0].text and lint.suggestion is None


def test_lint_refuses_a_bad_suggestion_edge() -> None:
    with pytest.raises(TwimlError, match="public"):
        lint_sip_uri("sip:a@h;tnx=IXabc", edge="ashburn")


# -- the command --------------------------------------------------------------------------


def test_cli_prints_the_twiml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["twiml", "--user", "a&b", "--host", "pbx.example.com",
                 "--edge", "ashburn-ix"]) == 0
    captured = capsys.readouterr()
    assert sip_text(captured.out) == "sip:a&b@pbx.example.com;edge=ashburn-ix"
    assert captured.err == ""


def test_cli_notes_a_legacy_edge_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["twiml", "--user", "a", "--host", "h", "--edge", "us1-ix"]) == 0
    captured = capsys.readouterr()
    assert sip_text(captured.out) == "sip:a@h;edge=ashburn-ix"
    assert "legacy" in captured.err and "ashburn-ix" in captured.err


@pytest.mark.parametrize("edge", ["ashburn", "roaming", "gll-ix"])
def test_cli_refuses_a_bad_edge_with_exit_64(edge: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["twiml", "--user", "a", "--host", "h", "--edge", edge]) == EX_USAGE == 64
    captured = capsys.readouterr()
    assert captured.out == "" and edge in captured.err


@pytest.mark.parametrize("argv", [
    ["twiml"],
    ["twiml", "--user", "a", "--host", "h"],
    ["twiml", "--lint", "sip:a@h;edge=ashburn-ix", "--user", "a"],
])
def test_cli_usage_errors_exit_64(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EX_USAGE
    assert "sipedge: twiml:" in capsys.readouterr().err


def test_cli_lint_exits_1_on_a_problem(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["twiml", "--lint", "sip:alice@pbx.example.com;tnx=us1-ix"]) == EX_LINT == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "sip:alice@pbx.example.com;tnx=us1-ix"
    assert out[1].startswith("  problem: tnx is deprecated")
    assert out[2] == "  suggested: sip:alice@pbx.example.com;edge=ashburn-ix"


def test_cli_lint_exits_0_when_fine(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["twiml", "--lint", "sip:alice@pbx.example.com;edge=ashburn-ix"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "  OK"
    assert main(["twiml", "--lint", "sip:alice@pbx.example.com;edge=us1-ix"]) == 0
    assert "OK (notes only)" in capsys.readouterr().out


def test_cli_lint_uses_edge_for_a_connection_sid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["twiml", "--lint", "sip:a@h;tnx=IXabc", "--edge", "london-ix"]) == EX_LINT
    assert "  suggested: sip:a@h;edge=london-ix" in capsys.readouterr().out
