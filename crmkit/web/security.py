"""Security headers on every response: a pure ASGI middleware (no response buffering).

The admin serves every asset from its own origin and uses no inline scripts or styles, so the
Content-Security-Policy can be strict: scripts, styles, images and fonts from ``'self'`` only,
no framing (``frame-ancestors 'none'``), forms posting only to ourselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]

DEFAULT_CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

DEFAULT_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-security-policy", DEFAULT_CSP),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=(), payment=()"),
    ("cross-origin-opener-policy", "same-origin"),
)


class SecurityHeadersMiddleware:
    """Add security headers to every HTTP response that does not set them itself.

    ``headers`` replaces the defaults (pairs of lower-case name and value). Over HTTPS the
    middleware also sends ``Strict-Transport-Security``.
    """

    def __init__(self, app: Any, headers: Iterable[tuple[str, str]] = DEFAULT_HEADERS, hsts: bool = True):
        self.app = app
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        secure = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in self.headers:
                    if name not in present:
                        headers.append((name, value))
                if secure and self.hsts and b"strict-transport-security" not in present:
                    headers.append((b"strict-transport-security", b"max-age=31536000; includeSubDomains"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
