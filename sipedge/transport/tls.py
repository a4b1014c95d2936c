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
  admitted by the address ACL of the proxy core, as for UDP and TCP.
"""

from __future__ import annotations

import ssl

from sipedge.transport.base import TlsSettings, TransportError, TransportErrorReason

__all__ = ["client_context", "server_context"]


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """The context for outbound TLS connections.

    Args:
        settings: ``cafile`` is required; ``certfile``/``keyfile``, when set, are
            presented to servers that ask for a client certificate (mutual TLS).

    Returns:
        A verifying client context (CERT_REQUIRED, check_hostname, TLS ≥ 1.2).

    Raises:
        TransportError: TLS_CONFIG when a file is missing or unreadable.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
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
        A server context (TLS ≥ 1.2, no client certificate requested).

    Raises:
        TransportError: TLS_CONFIG when the certificate is missing or unreadable.
    """
    if settings.certfile is None:
        raise TransportError(TransportErrorReason.TLS_CONFIG, "a TLS listener needs certfile")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(settings.certfile, settings.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(TransportErrorReason.TLS_CONFIG, str(exc)) from exc
    return ctx
