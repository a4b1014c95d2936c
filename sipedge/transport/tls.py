"""TLS for the stream transports: the two ``ssl.SSLContext`` objects sipedge uses.

Theory of operation: TLS is TCP with a context, so listeners and connections are
``tcp.StreamTable``'s (same framing, reuse table, idle reaping); this module only
builds the contexts from :class:`~sipedge.transport.base.TlsSettings`.

* Client context (towards Twilio's gateways on 5061): TLS 1.2 minimum (Twilio's
  requirement), the peer certificate verified against the configured CA bundle only
  (not the system store: the operator pins what the private link may present), host
  name checked against the server name given per destination, which is also sent as
  SNI — the localized domain, e.g. ``example.sip.ashburn-ix.twilio.com``.
* Server context (for PBXs or Twilio connecting to us): our certificate chain,
  TLS 1.2 minimum; client certificates are not requested because sources are
  admitted by the address ACL of the proxy core, as for UDP and TCP. The stream table
  accepts TLS connections as plain TCP and hands each socket to the loop's TLS
  (``loop.connect_accepted_socket``) itself, so a failed inbound handshake is an
  exception it sees, not one the loop swallows.

Policy, pinned here and in ``tests/transport/test_tls_hardening.py``:

* Versions: TLS 1.2 and 1.3 only, both directions. Twilio accepts TLS 1.2 by default
  and deprecated 1.0/1.1 (error 32222); so does RFC 8996.
* Verification cannot be switched off. There is no ``verify`` key in the config and
  this module has no insecure path: CERT_REQUIRED and ``check_hostname`` are set
  explicitly rather than only inherited from ``PROTOCOL_TLS_CLIENT``.
* Host names follow RFC 6125 as OpenSSL's ``X509_check_host`` applies them with
  Python's flags: only the DNS names in subjectAltName count (the subject CN fallback
  is turned off, §6.4.4; public CAs must include the SAN), and a wildcard stands for
  exactly one whole left-most label, so ``*.sip.ashburn-ix.twilio.com`` matches
  ``example.sip.ashburn-ix.twilio.com`` and matches neither ``a.b.sip.ashburn-ix.twilio.com``
  nor ``sip.ashburn-ix.twilio.com`` (no partial wildcards such as ``ex*.sip…``, §6.4.3).
* ``VERIFY_X509_STRICT`` is on: chains that break RFC 5280 (a CA certificate without
  keyUsage or basicConstraints, a missing authority key identifier, …) are refused.
  Twilio's certificates are public-CA issued, and the CA/Browser Forum Baseline
  Requirements already bind those CAs to RFC 5280 profiles. Python 3.13 turns the same
  flag on in ``ssl.create_default_context``. The cost: a private CA that an operator
  pins (a lab, a test gateway) must issue RFC 5280 certificates; trustme's are.
* No TLS compression (CRIME; OpenSSL 3 builds without it anyway) and no renegotiation
  (``OP_NO_RENEGOTIATION``: a client cannot make the server renegotiate, and we never
  answer a server's HelloRequest; TLS 1.3 has no renegotiation at all).
* Ciphers: Python's default list, kept on purpose. For TLS 1.2 it is
  ``@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM``:
  forward-secret (EC)DHE key exchange only, AEAD suites first, no RC4, 3DES, NULL or
  SHA-1 MAC suites; security level 2 refuses RSA/DH keys under 2048 bits. TLS 1.3 suites
  are OpenSSL's three AEAD ones. A test fails if that default ever loosens.

A failed handshake to a destination is classified by :func:`handshake_failure` so
the stream table can log one line naming the peer and the reason, and count it; a
failed handshake of a peer connecting to us, by :func:`inbound_handshake_failure`
(a TLS 1.0/1.1 client, a plain-text SIP message on the TLS port, a client that does
not trust our certificate, a handshake not finished in time).
"""

from __future__ import annotations

import ssl

from sipedge.transport.base import TlsSettings, TransportError, TransportErrorReason

__all__ = [
    "TLS_FAILURE_REASONS",
    "TLS_INBOUND_FAILURE_REASONS",
    "client_context",
    "handshake_failure",
    "inbound_handshake_failure",
    "server_context",
]

# No compression (CRIME) and no renegotiation; Python already sets OP_NO_COMPRESSION,
# it is repeated so the policy does not depend on a default.
_OPTIONS = ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """The context for outbound TLS connections.

    Args:
        settings: ``cafile`` is required; ``certfile``/``keyfile``, when set, are
            presented to servers that ask for a client certificate (mutual TLS).

    Returns:
        A verifying client context (CERT_REQUIRED, check_hostname on the
        subjectAltName only, X509 strict, TLS ≥ 1.2, no compression or renegotiation).

    Raises:
        TransportError: TLS_CONFIG when a file is missing or unreadable.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= _OPTIONS
    # Explicit although PROTOCOL_TLS_CLIENT starts this way: verification is the policy,
    # not a default someone may flip (check_hostname first: CERT_NONE would refuse it).
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    ctx.hostname_checks_common_name = False  # RFC 6125 §6.4.4: subjectAltName only
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # RFC 5280 conformance (module docstring)
    try:
        ctx.load_verify_locations(cafile=settings.cafile)
        if settings.certfile is not None:
            ctx.load_cert_chain(settings.certfile, settings.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(TransportErrorReason.TLS_CONFIG, str(exc)) from exc
    return ctx


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """The context for TLS listeners.

    Args:
        settings: ``certfile`` (and ``keyfile`` unless the key is in it) required.

    Returns:
        A server context (TLS ≥ 1.2, no compression or renegotiation, our cipher
        order, no client certificate requested).

    Raises:
        TransportError: TLS_CONFIG when the certificate is missing or unreadable.
    """
    if settings.certfile is None:
        raise TransportError(TransportErrorReason.TLS_CONFIG, "a TLS listener needs certfile")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= _OPTIONS | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(settings.certfile, settings.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(TransportErrorReason.TLS_CONFIG, str(exc)) from exc
    return ctx


# OpenSSL X509_V_ERR_* codes (x509_vfy.h) grouped into the reasons we count. The set is
# closed so a metric label never takes an unbounded value.
_UNTRUSTED = frozenset({
    2,   # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
    18,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    20,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
    24,  # X509_V_ERR_INVALID_CA
    27,  # X509_V_ERR_CERT_UNTRUSTED
    28,  # X509_V_ERR_CERT_REJECTED
})
_EXPIRED = 10  # X509_V_ERR_CERT_HAS_EXPIRED
_NOT_YET_VALID = 9  # X509_V_ERR_CERT_NOT_YET_VALID
_NAME_MISMATCH = frozenset({62, 64})  # X509_V_ERR_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH
# The peer and we share no TLS version: its alert, or our refusal of its ServerHello.
_VERSION_REASONS = frozenset({"TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL"})

#: Every value :func:`handshake_failure` can return as its reason (metric labels).
TLS_FAILURE_REASONS = (
    "untrusted",
    "expired",
    "not_yet_valid",
    "hostname_mismatch",
    "verify_failed",
    "protocol_version",
    "handshake_failed",
)


def handshake_failure(exc: ssl.SSLError) -> tuple[str, str]:
    """Why an outbound TLS handshake failed, as a counter reason and a log phrase.

    Args:
        exc: what ``loop.create_connection`` raised for the handshake
            (``ssl.SSLCertVerificationError`` when our verification refused the
            peer's certificate, another ``ssl.SSLError`` for alerts and protocol
            failures).

    Returns:
        ``(reason, detail)``: ``reason`` is one of :data:`TLS_FAILURE_REASONS`;
        ``detail`` is OpenSSL's text, e.g. ``certificate verify failed: certificate has
        expired``, ``certificate verify failed: hostname mismatch`` or ``TLS version
        refused: tlsv1 alert protocol version``.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in _NAME_MISMATCH:
            # Python's text repeats the name we asked for, which the log line names.
            return "hostname_mismatch", "certificate verify failed: hostname mismatch"
        detail = f"certificate verify failed: {exc.verify_message}"
        if code in _UNTRUSTED:
            return "untrusted", detail
        if code == _EXPIRED:
            return "expired", detail
        if code == _NOT_YET_VALID:
            return "not_yet_valid", detail
        return "verify_failed", detail
    text = exc.reason.lower().replace("_", " ") if exc.reason else str(exc)
    if exc.reason in _VERSION_REASONS:
        return "protocol_version", f"TLS version refused: {text}"
    return "handshake_failed", f"TLS handshake failed: {text}"


# What OpenSSL says when the first bytes on a TLS port are not a TLS record: the record
# header's version field is not 3.x (a SIP request line, a CRLF keep-alive, random
# bytes), or OpenSSL recognised an HTTP request or proxy CONNECT in them.
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST"})
# The alerts a client sends when it refuses *our* certificate (RFC 8446 §6.2): it does
# not know our CA, the certificate is expired, revoked, for another name or unusable.
_CLIENT_REFUSED_CERT = frozenset({
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
})

#: Every value :func:`inbound_handshake_failure` can return as its reason (metric labels).
TLS_INBOUND_FAILURE_REASONS = (
    "protocol_version",
    "not_tls",
    "certificate",
    "timeout",
    "closed",
    "handshake_failed",
)


def inbound_handshake_failure(exc: BaseException) -> tuple[str, str]:
    """Why the TLS handshake of a peer connecting to our listener failed.

    Args:
        exc: what ``loop.connect_accepted_socket`` raised (asyncio and uvloop raise
            the same: ``ssl.SSLError`` for what OpenSSL refused or the peer's alert,
            ``ConnectionAbortedError`` when ``ssl_handshake_timeout`` passed,
            ``ConnectionResetError`` when the peer closed before finishing).

    Returns:
        ``(reason, detail)``: ``reason`` is one of :data:`TLS_INBOUND_FAILURE_REASONS`
        (``protocol_version``: it offered only TLS 1.0/1.1; ``not_tls``: plain text or
        garbage, typically a PBX sending SIP over TCP to the TLS port; ``certificate``:
        it refused our certificate; ``timeout``; ``closed``: it went away mid-handshake,
        e.g. a TCP port check; ``handshake_failed``: anything else); ``detail`` is the
        log phrase with OpenSSL's text.
    """
    if isinstance(exc, ssl.SSLError):
        text = exc.reason.lower().replace("_", " ") if exc.reason else str(exc)
        if exc.reason in _VERSION_REASONS:
            return "protocol_version", f"TLS version refused: {text}"
        if exc.reason in _NOT_TLS:
            return "not_tls", f"not a TLS client: {text}"
        if exc.reason in _CLIENT_REFUSED_CERT:
            return "certificate", f"the client refused our certificate: {text}"
        if isinstance(exc, ssl.SSLEOFError):
            return "closed", f"closed during the handshake: {text}"
        return "handshake_failed", f"TLS handshake failed: {text}"
    # Both loops abort a handshake past ssl_handshake_timeout with ConnectionAbortedError
    # ("SSL handshake is taking longer than ...").
    if isinstance(exc, ConnectionAbortedError | TimeoutError):
        return "timeout", "no complete handshake within the handshake timeout"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "closed", "closed during the handshake"
    return "handshake_failed", f"TLS handshake failed: {exc or type(exc).__name__}"
