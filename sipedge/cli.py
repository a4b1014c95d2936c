"""Command line: ``sipedge run | check`` (argparse); maps errors to exit codes.

Exit codes follow sysexits.h: 78 (EX_CONFIG) for an invalid config, 64 for usage errors.
"""

from __future__ import annotations

import argparse
import sys

from sipedge import __version__
from sipedge.config import ConfigError, load_config, summary

__all__ = ["main"]

EX_CONFIG = 78


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
    check = sub.add_parser("check", help="validate a config file and print a summary")
    check.add_argument("--config", required=True, help="TOML config file")
    return parser


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
    from sipedge.daemon import run
    from sipedge.logs import setup_logging

    setup_logging(args.log_level or config.log.level)
    for warning in config.warnings:
        print(f"sipedge: warning: {warning}", file=sys.stderr)
    return run(config)
