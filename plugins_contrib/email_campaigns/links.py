"""Signed tracking and unsubscribe links (itsdangerous, one salt per purpose).

A token names only ids (the send, the tracked link); the URL a click goes to is read from the
campaign's link table, so a forged or altered token cannot make crmkit redirect anywhere else,
and a token made for one purpose (an open) is refused by another (a click, an unsubscribe).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from typing import Any

from itsdangerous import BadData, URLSafeSerializer

SALTS = {
    "open": "crmkit.email_campaigns.open",
    "click": "crmkit.email_campaigns.click",
    "unsubscribe": "crmkit.email_campaigns.unsubscribe",
}


class BadToken(ValueError):
    """A link token that was altered, truncated or made for another purpose."""


def _serializer(crm: Any, purpose: str) -> URLSafeSerializer:
    return URLSafeSerializer(crm.secret_key, salt=SALTS[purpose])


@functools.lru_cache(maxsize=64)
def _signing_key(secret_key: str | bytes, salt: str) -> bytes:
    """itsdangerous's derived key (``django-concat``, SHA-1) for ``salt``, computed once."""
    secret = secret_key.encode() if isinstance(secret_key, str) else secret_key
    return hashlib.sha1(salt.encode() + b"signer" + secret).digest()


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def make_token(crm: Any, purpose: str, payload: Any) -> str:
    """Sign ``payload`` (JSON data) for one purpose.

    The token is what ``URLSafeSerializer(secret, salt).dumps`` makes (never compressed, which
    itsdangerous reads as well), signed here with the derived key computed once: a campaign signs
    six links per message, and itsdangerous derives the key again for every one.
    """
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    signature = _b64(hmac.new(_signing_key(crm.secret_key, SALTS[purpose]), body, hashlib.sha1).digest())
    return (body + b"." + signature).decode("ascii")


def read_token(crm: Any, purpose: str, token: str) -> Any:
    """The payload of a token made by :func:`make_token` for ``purpose``; BadToken otherwise."""
    try:
        return _serializer(crm, purpose).loads(token)
    except BadData as exc:
        raise BadToken(str(exc)) from None


def base_url(crm: Any) -> str:
    """The public address of this CRM (``base_url`` in crmkit.yaml), without a trailing slash."""
    return str(crm.config.base_url).rstrip("/")


def open_url(crm: Any, send_id: int) -> str:
    """The open-tracking pixel of one send."""
    return f"{base_url(crm)}/t/o/{make_token(crm, 'open', [send_id])}.gif"


def click_url(crm: Any, send_id: int, link_id: int) -> str:
    """The tracked redirect of one link for one send."""
    return f"{base_url(crm)}/t/c/{make_token(crm, 'click', [send_id, link_id])}"


def unsubscribe_token(crm: Any, email: str | None = None, send_id: int | None = None) -> str:
    """A token that unsubscribes the address of a campaign send, or ``email`` for other mail.

    A send's token names only the send (the address is looked up), so the address never appears
    in URLs and server logs.
    """
    if send_id is not None:
        return make_token(crm, "unsubscribe", {"s": int(send_id)})
    if not email or "@" not in email:
        raise ValueError("an unsubscribe token needs a send or an email address")
    return make_token(crm, "unsubscribe", {"e": email.strip().lower()})


def unsubscribe_url(crm: Any, email: str | None = None, send_id: int | None = None) -> str:
    """The one-click unsubscribe URL (RFC 8058) of a send, or of ``email``."""
    return f"{base_url(crm)}/t/u/{unsubscribe_token(crm, email, send_id)}"


def read_unsubscribe(crm: Any, token: str) -> tuple[str | None, int | None]:
    """``(email, send_id)`` from an unsubscribe token (one of them None); BadToken when it is not ours."""
    data = read_token(crm, "unsubscribe", token)
    if isinstance(data, dict) and type(data.get("s")) is int and set(data) == {"s"}:
        return None, data["s"]
    if isinstance(data, dict) and isinstance(data.get("e"), str) and "@" in data["e"] and set(data) == {"e"}:
        return data["e"], None
    raise BadToken("not an unsubscribe token")


def read_ids(crm: Any, purpose: str, token: str, count: int) -> list[int]:
    """A list of ``count`` integer ids from an open or click token; BadToken otherwise."""
    data = read_token(crm, purpose, token)
    if not isinstance(data, list) or len(data) != count or not all(type(i) is int for i in data):
        raise BadToken(f"not a {purpose} token")
    return data
