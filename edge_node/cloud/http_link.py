"""The cloud link's HTTP transport: httpx's standard `AsyncHTTPTransport` (httpcore's
connection pool) with the policy's TLS trust (`cloud.tls.ca_bundle`), client certificate
(mTLS) and proxy (`cloud.proxy`).

The client sends prebuilt requests to the transport itself, without `httpx.AsyncClient`'s
layers (URL merging, cookies, auth and redirect handling, event hooks: none applies to
the one JSON endpoint; they add about 0.15-0.4 ms to every call, docs/performance.md).
Environment proxy variables (`HTTP(S)_PROXY`, `NO_PROXY`) are not read: the policy is the
one place that says where the node's calls go. Trust without `tls.ca_bundle` is httpx's
default: the system's CAs plus certifi's bundle. An `https://` proxy is checked with the
same trust as the cloud.
"""

from __future__ import annotations

import ssl

import certifi
import httpx

from router.errors import PolicyError, PolicyIssue
from router.policy import CloudSettings

LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's defaults


def tls_context(settings: CloudSettings) -> ssl.SSLContext:
    """The SSL context that checks the cloud's certificate (against `tls.ca_bundle` alone,
    or the system's CAs plus certifi's bundle, as httpx does by default) and host name,
    holding the node's client certificate when one is set. Reads the files now. Raises
    PolicyError naming the `cloud.tls` field whose file is missing, unreadable or not
    valid PEM."""
    tls = settings.tls
    try:
        if tls.ca_bundle is None:
            ctx = ssl.create_default_context()
            ctx.load_verify_locations(certifi.where())
        else:
            ctx = ssl.create_default_context(cafile=tls.ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise _unusable("ca_bundle", tls.ca_bundle, exc) from exc
    if tls.client_cert is not None:
        try:
            ctx.load_cert_chain(tls.client_cert, tls.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise _unusable("client_cert", tls.client_cert, exc) from exc
    return ctx


def transport(settings: CloudSettings) -> httpx.AsyncHTTPTransport:
    """httpx's standard transport for the cloud link: keep-alive pool (httpx's default
    limits), no transport-level retries, the policy's proxy and TLS (`tls_context`).
    Raises PolicyError as `tls_context` does."""
    ctx = tls_context(settings)
    proxy = None
    if settings.proxy is not None:
        secure = settings.proxy.startswith("https:")
        proxy = httpx.Proxy(settings.proxy, ssl_context=ctx if secure else None)
    return httpx.AsyncHTTPTransport(verify=ctx, proxy=proxy, limits=LIMITS, retries=0)


def _unusable(field: str, path: str | None, exc: BaseException) -> PolicyError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
    return PolicyError(
        [
            PolicyIssue(
                path=f"cloud.tls.{field}",
                message=f"cannot use {path}: {reason} (a readable PEM file is required)",
            )
        ]
    )
