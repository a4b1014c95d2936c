"""Command line: ``sipedge run | check | gateways | verify | demo | firewall | twiml``
(argparse); maps errors to exit codes.

Exit codes follow sysexits.h: 78 (EX_CONFIG) for an invalid config, 64 (EX_USAGE) for usage
errors (``twiml`` with a refused edge), 69 (EX_UNAVAILABLE) when ``gateways`` cannot reach the
daemon's admin API or ``verify`` finds no gateway of the first edge answering;
``twiml --lint`` exits 1 when the URI has a problem, like a linter; ``demo``: 0 every
call answered, 1 some failed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

from sipedge import __version__
from sipedge.config import Config, ConfigError, load_config, summary
from sipedge.lab.topology import LabAddresses
from sipedge.logs import LOG_FORMATS
from sipedge.sip.address import Endpoint
from sipedge.sip.errors import SipError

__all__ = ["main"]

EX_CONFIG = 78
EX_UNAVAILABLE = 69
EX_USAGE = 64
#: ``twiml --lint`` found a problem in the URI.
EX_LINT = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipedge", description="SIP signalling edge proxy for Twilio Interconnect")
    parser.add_argument("--version", action="version", version=f"sipedge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy in the foreground (logs to stderr)")
    run.add_argument("--config", required=True, help="TOML config file")
    run.add_argument("--log-level", default=None,
                     choices=["debug", "info", "warning", "error"],
                     help="override [log] level")
    run.add_argument("--log-format", default=None, choices=LOG_FORMATS,
                     help="override [log] format: text lines or one JSON object per line")
    check = sub.add_parser("check", help="validate a config file and print a summary")
    check.add_argument("--config", required=True, help="TOML config file")
    gateways = sub.add_parser("gateways", help="print the running daemon's gateway table "
                              "(from its [admin] listener)")
    gateways.add_argument("--config", required=True, help="TOML config file")
    gateways.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    _add_firewall(sub)
    _add_twiml(sub)
    verify = sub.add_parser(
        "verify", help="OPTIONS every configured gateway now (and optionally place one test "
        "call); contacts the gateways the config names")
    verify.add_argument("--config", required=True, help="TOML config file")
    verify.add_argument("--call", metavar="NUMBER", default=None,
                        help="place one test INVITE to NUMBER through the first edge, then "
                        "hang up (BYE) or CANCEL it")
    verify.add_argument("--timeout", type=float, default=2.0,
                        help="seconds to wait for each answer (default 2)")
    demo = sub.add_parser(
        "demo", help="run sipedge on the loopback lab with simulated Twilio gateways and a "
        "PBX, place calls both ways and fail Virginia over to Oregon")
    demo.add_argument("--duration", type=float, default=40.0,
                      help="seconds of calls; the phases scale with it (default 40)")
    demo.add_argument("--rate", type=float, default=4.0,
                      help="new calls per second, alternately each way (default 4)")
    lab = LabAddresses()
    demo.add_argument("--inside", default=lab.inside.hostport,
                      help=f"sipedge's PBX-side listener (default {lab.inside.hostport})")
    demo.add_argument("--outside", default=lab.outside.hostport,
                      help=f"sipedge's Twilio-side listener (default {lab.outside.hostport})")
    demo.add_argument("--virginia", default=",".join(lab.virginia),
                      help="ashburn-ix gateway hosts, comma-separated")
    demo.add_argument("--oregon", default=",".join(lab.oregon),
                      help="san-jose-ix gateway hosts, comma-separated")
    demo.add_argument("--gateway-port", type=int, default=lab.gateway_port)
    demo.add_argument("--pbx", default=lab.pbx.hostport,
                      help=f"the PBX callee (default {lab.pbx.hostport})")
    demo.add_argument("--admin", default=lab.admin.hostport if lab.admin else "off",
                      help="sipedge's admin API, or 'off' (default %(default)s)")
    return parser


def _hostport(text: str, transport: str) -> Endpoint:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: expected ip:port")
    return Endpoint(transport, host, int(port))


def _demo(args: argparse.Namespace) -> int:
    from sipedge.lab import demo

    try:
        addresses = LabAddresses(
            inside=_hostport(args.inside, "udp"), outside=_hostport(args.outside, "udp"),
            virginia=tuple(h.strip() for h in args.virginia.split(",") if h.strip()),
            oregon=tuple(h.strip() for h in args.oregon.split(",") if h.strip()),
            gateway_port=args.gateway_port, pbx=_hostport(args.pbx, "udp"),
            admin=None if args.admin == "off" else _hostport(args.admin, "tcp"))
    except ValueError as exc:
        print(f"sipedge demo: {exc}", file=sys.stderr)
        return EX_USAGE
    if not (args.duration > 0 and args.rate > 0):
        print("sipedge demo: --duration and --rate must be positive", file=sys.stderr)
        return EX_USAGE
    code, _ = demo.run(addresses, duration_s=args.duration, rate=args.rate, out=sys.stdout)
    return code


def _gateways(config: Config, timeout_s: float) -> int:
    """``sipedge gateways``: GET /gateways from the admin listener, print a table."""
    listen = config.admin.listen
    if listen is None:
        print(f"sipedge: {config.path}: admin.listen is not set; the gateway table is "
              "served by the admin API", file=sys.stderr)
        return EX_CONFIG
    # A wildcard listener is reached over loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(listen.host, listen.host)
    url = f"http://{Endpoint('tcp', host, listen.port).hostport}/gateways"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=timeout_s) as resp:
            rows = json.load(resp)
    except urllib.error.URLError as exc:
        print(f"sipedge: cannot reach the daemon at {url}: {exc.reason}", file=sys.stderr)
        return EX_UNAVAILABLE
    except (OSError, ValueError) as exc:
        print(f"sipedge: cannot read the gateway table from {url}: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    from sipedge.admin import gateway_table

    print(gateway_table(rows))
    return 0


def _add_firewall(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from sipedge.firewall import FORMATS

    firewall = sub.add_parser(
        "firewall", help="print host firewall rules for the link (from the config and the "
        "Twilio catalogue; nothing is applied)")
    firewall.add_argument("--config", required=True, help="TOML config file")
    firewall.add_argument("--format", default="nftables", choices=FORMATS,
                          help="nft -f file (table inet sipedge, default) or "
                          "iptables-restore --noflush file (SIPEDGE chains)")


def _firewall(config: Config, fmt: str) -> int:
    """``sipedge firewall``: the rules on stdout, what they cannot express on stderr."""
    from sipedge.firewall import render

    text, ruleset = render(config, fmt)
    for note in ruleset.notes:
        print(f"sipedge: warning: {note}", file=sys.stderr)
    sys.stdout.write(text)
    return 0


def _add_twiml(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    twiml = sub.add_parser(
        "twiml", help="print <Dial><Sip> TwiML for an Interconnect edge, or lint a <Sip> URI "
        "(--lint; exit 1 on a problem)")
    twiml.add_argument("--user", help="user part of the URI (escaped for you)")
    twiml.add_argument("--host", help="the SIP endpoint Twilio calls over the link "
                       "(name or IP, optionally :port)")
    twiml.add_argument("--edge", help="Interconnect edge (ashburn-ix ...); with --lint, the "
                       "edge to suggest for a tnx=<connection SID>")
    twiml.add_argument("--lint", metavar="URI", help="check a <Sip> URI instead: tnx=, "
                       "edge=, and the corrected URI")


def _twiml(args: argparse.Namespace) -> int:
    """``sipedge twiml``: TwiML on stdout (exit 0/64) or a lint report (exit 0/1/64)."""
    from sipedge.twiml import TwimlError, dial_sip, lint_sip_uri

    try:
        if args.lint is not None:
            if args.user is not None or args.host is not None:
                print("sipedge: twiml: --lint takes a URI, not --user/--host", file=sys.stderr)
                return EX_USAGE
            lint = lint_sip_uri(args.lint, edge=args.edge)
        else:
            missing = [f"--{n}" for n in ("user", "host", "edge") if getattr(args, n) is None]
            if missing:
                print(f"sipedge: twiml: {' '.join(missing)} required (or --lint URI)",
                      file=sys.stderr)
                return EX_USAGE
            twiml = dial_sip(args.user, args.host, args.edge)
    except TwimlError as exc:
        print(f"sipedge: twiml: {exc.reason}", file=sys.stderr)
        return EX_USAGE
    if args.lint is None:
        if twiml.note:
            print(f"sipedge: note: {twiml.note}", file=sys.stderr)
        sys.stdout.write(twiml.xml)
        return 0
    print(lint.uri)
    for finding in lint.findings:
        print(f"  {finding.severity}: {finding.text}")
    if lint.suggestion is not None:
        print(f"  suggested: {lint.suggestion}")
    if lint.ok:
        print("  OK" if not lint.findings else "  OK (notes only)")
        return 0
    return EX_LINT


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sipedge`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "twiml":  # needs no config
        return _twiml(args)
    if args.command == "demo":
        return _demo(args)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"sipedge: {exc}", file=sys.stderr)
        return EX_CONFIG
    if args.command == "check":
        print(summary(config))
        return 0
    if args.command == "gateways":
        return _gateways(config, args.timeout)
    if args.command == "firewall":
        return _firewall(config, args.format)
    if args.command == "verify":
        from sipedge import verify

        if not args.timeout > 0:
            print("sipedge verify: --timeout must be positive", file=sys.stderr)
            return EX_USAGE
        if args.call is not None:
            try:
                verify.call_request_uri(config, args.call)
            except (ValueError, SipError) as exc:
                print(f"sipedge verify: --call: {exc}", file=sys.stderr)
                return EX_USAGE
        return verify.run(config, call=args.call, timeout_s=args.timeout, out=sys.stdout)
    from sipedge.logs import setup_logging
    from sipedge.workers import ENV, supervise, worker_tag

    tag = worker_tag()
    setup_logging(args.log_level or config.log.level, args.log_format or config.log.format,
                  tag=tag)
    for warning in config.warnings:
        print(f"sipedge: warning: {warning}", file=sys.stderr)
    if config.process.workers > 1 and ENV not in os.environ:
        # The supervisor never imports the daemon (nor the proxy core): its memory is
        # part of the total that issue 14 bounds.
        return supervise(config, log_level=args.log_level, log_format=args.log_format)
    from sipedge.daemon import run

    return run(config, log_level=args.log_level, log_format=args.log_format)
