"""Command line: placeholder until the CLI lands."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("usage: sipedge run|check --config FILE", file=sys.stderr)
    return 2
