"""sipedge.sip: the sans-I/O SIP protocol core (stdlib only, bytes in / bytes out).

Curated re-exports, h11 style: ``from sipedge.sip import parse, Request, forward_request``.
"""

from sipedge.sip.address import Endpoint
from sipedge.sip.errors import ParseError, ProtocolViolation, SipError
from sipedge.sip.framing import StreamFramer
from sipedge.sip.headers import CSeq, NameAddr, Via, make_branch, parse_name_addr, parse_via
from sipedge.sip.message import (
    DEFAULT_LIMITS,
    ForwardPlan,
    Limits,
    Message,
    Request,
    Response,
    answer_parse_error,
    build_ack,
    build_cancel,
    build_request,
    build_response,
    call_id_of,
    forward_request,
    parse,
    strip_top_via,
)
from sipedge.sip.uri import Uri, parse_uri, uri_equal

# -- transaction layer (sip/timers.py, sip/transaction.py) ------------------------------
# Owned by the transaction work: add its re-exports here and to __all__ below.

__all__ = [
    "DEFAULT_LIMITS",
    "CSeq",
    "Endpoint",
    "ForwardPlan",
    "Limits",
    "Message",
    "NameAddr",
    "ParseError",
    "ProtocolViolation",
    "Request",
    "Response",
    "SipError",
    "StreamFramer",
    "Uri",
    "Via",
    "answer_parse_error",
    "build_ack",
    "build_cancel",
    "build_request",
    "build_response",
    "call_id_of",
    "forward_request",
    "make_branch",
    "parse",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "strip_top_via",
    "uri_equal",
    # transaction layer names go here
]
