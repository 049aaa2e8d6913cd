"""Built-in plugin: who is logged in to the admin (the signed session cookie).

The session is read by :func:`crmkit.web.auth.session_actor`; API tokens are another built-in
plugin (``api_tokens``) that answers first when a Bearer header is present.
"""

from __future__ import annotations

from crmkit.hookspecs import hookimpl


@hookimpl
def actor_from_request(crm, request):
    """The session's user as an Actor, or None without a (valid, unexpired) login session."""
    if "session" not in request.scope:
        return None
    from crmkit.web.auth import session_actor

    return session_actor(crm, request)
