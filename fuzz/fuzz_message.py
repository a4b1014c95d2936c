"""atheris harness: parse() and forward_request()/strip_top_via() on arbitrary bytes.

The invariant (house rule 9, after h11): any input either parses or raises ParseError;
the forwarding transforms never raise anything but ParseError/ProtocolViolation on a
parsed message.  Seeds are the shared corpus, copied into fuzz/corpus_seed/ on first run.

Usage: python fuzz/fuzz_message.py -max_total_time=300 fuzz/corpus_seed
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEED_DIR = Path(__file__).resolve().parent / "corpus_seed"
CORPUS = Path(os.environ.get("SIPEDGE_CORPUS", ROOT.parent / "shared" / "corpus"))


def copy_seeds() -> None:
    """Copy every corpus .sip file into fuzz/corpus_seed/ if that directory is empty."""
    SEED_DIR.mkdir(exist_ok=True)
    if any(SEED_DIR.iterdir()) or not CORPUS.is_dir():
        return
    for path in sorted(CORPUS.rglob("*.sip")):
        rel = path.relative_to(CORPUS).as_posix().replace("/", "__")
        shutil.copyfile(path, SEED_DIR / rel)


def main() -> None:
    import atheris

    with atheris.instrument_imports():
        from sipedge.proxy.validation import validate_request, validate_response
        from sipedge.sip import (
            ForwardPlan,
            ParseError,
            ProtocolViolation,
            Request,
            StreamFramer,
            forward_request,
            parse,
            strip_top_via,
        )

    plan = ForwardPlan(
        via=b"SIP/2.0/UDP 192.0.2.254:5060;branch=z9hG4bKfuzz",
        record_route=(b"<sip:192.0.2.254;lr>",),
        pop_routes=1,
        received=b"198.51.100.7",
        rport=5062,
        request_uri=b"sip:fuzz@example.com",
    )

    def one_input(data: bytes) -> None:
        try:
            msg = parse(data)
        except ParseError:
            msg = None
        if msg is not None:
            try:
                if isinstance(msg, Request):
                    if validate_request(msg) is None:
                        out = forward_request(msg, plan)
                        try:
                            # What we emit must parse again *and* pass validation: parse()
                            # only frames, the header rules run on first access.
                            again = parse(out)
                            assert isinstance(again, Request)
                            again.header_lines()
                            verdict = validate_request(again)
                        except ParseError as exc:
                            raise AssertionError(f"forwarded message unparseable: {exc}") from exc
                        if verdict is not None and verdict.status != 483:
                            raise AssertionError(f"forwarded message invalid: {verdict}")
                    else:
                        forward_request(msg, plan)
                else:
                    validate_response(msg)
                    if msg.via_count > 1:
                        parse(strip_top_via(msg))
            except (ParseError, ProtocolViolation):
                pass
        framer = StreamFramer(max_message=8192)
        try:
            framer.feed(data)
            while framer.next_message() is not None:
                pass
        except ParseError:
            pass

    copy_seeds()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
