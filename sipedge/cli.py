"""Command line: ``sipedge run | check | gateways`` (argparse); maps errors to exit codes.

Exit codes follow sysexits.h: 78 (EX_CONFIG) for an invalid config, 64 for usage errors,
69 (EX_UNAVAILABLE) when ``gateways`` cannot reach the daemon's admin API.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

from sipedge import __version__
from sipedge.config import Config, ConfigError, load_config, summary
from sipedge.logs import LOG_FORMATS
from sipedge.sip.address import Endpoint

__all__ = ["main"]

EX_CONFIG = 78
EX_UNAVAILABLE = 69


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
    return parser


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sipedge`` console script."""
    args = _parser().parse_args(argv)
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
    from sipedge.daemon import run
    from sipedge.logs import setup_logging

    setup_logging(args.log_level or config.log.level, args.log_format or config.log.format)
    for warning in config.warnings:
        print(f"sipedge: warning: {warning}", file=sys.stderr)
    return run(config, log_level=args.log_level, log_format=args.log_format)
