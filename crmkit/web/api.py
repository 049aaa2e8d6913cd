"""The REST API: ``/api/v1/{entity}[/{id}[/{action}]]`` and ``/api/v1/openapi.json``.

One generic set of routes keyed by entity name (adding an entity adds no code). Every read and
write goes through :class:`crmkit.core.records.RecordStore` as the calling actor, so the API
answers exactly what the admin answers: same permissions, masks, validation and hooks. This
module only translates HTTP to store calls and store errors to HTTP statuses.
"""

from __future__ import annotations

import inspect
import logging
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from crmkit.core import conditions, queries
from crmkit.core.errors import BadRequest, ConflictError, CRMError, ValidationError
from crmkit.core.tables import SEARCH_COLUMN
from crmkit.plugins import PluginError, call_each
from crmkit.plugins.api_tokens import AUTH_METHOD, bearer_token
from crmkit.web.jsonenc import APIResponse, BadJSON, check_text, loads, text_problem

if TYPE_CHECKING:
    from crmkit.app import CRM
    from crmkit.core.actors import Actor

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
MAX_BODY = 1024 * 1024  # bytes; a record is small, a bigger body is a mistake or an attack
MAX_Q = 500  # characters of search text
MAX_ID = 2**31 - 1  # id columns are 32-bit integers: a larger id cannot exist
_DIGITS = re.compile(r"[0-9]{1,10}")
_IF_MATCH = re.compile(r'\s*(?:W/)?"?([0-9]{1,18})"?\s*')


# ------------------------------------------------------------------------------------------------
# Record actions (POST /api/v1/{entity}/{id}/{action})
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordAction:
    """A domain operation on one record (``lead/…/convert``), registered by a plugin.

    ``handler`` is called with the keyword arguments it accepts of ``crm``, ``entity``,
    ``record`` (as the caller sees it), ``payload`` (the JSON body) and ``actor``, and returns
    the records it touched as ``{name: record | [records] | None}``.
    """

    entity: str
    name: str
    handler: Callable[..., Mapping[str, Any] | None]
    description: str = ""
    input_schema: Mapping[str, Any] | None = None
    plugin: str = field(default="", compare=False)


_ACTIONS: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], RecordAction]] = weakref.WeakKeyDictionary()


def record_actions(crm: CRM) -> dict[tuple[str, str], RecordAction]:
    """Every registered record action by ``(entity, name)``, collected once per CRM."""
    if crm in _ACTIONS:
        return _ACTIONS[crm]
    out: dict[tuple[str, str], RecordAction] = {}
    for plugin, items in call_each(crm.pm, "register_record_actions", crm=crm):
        for item in items:
            action = item if isinstance(item, RecordAction) else RecordAction(**dict(item))
            action = RecordAction(
                action.entity, action.name, action.handler, action.description, action.input_schema, plugin
            )
            if action.entity not in crm.catalog:
                raise ValueError(
                    f"plugin {plugin}: record action {action.name!r} for unknown entity {action.entity!r}"
                )
            if not re.fullmatch(r"[a-z][a-z0-9_]*", action.name):
                raise ValueError(f"plugin {plugin}: record action name {action.name!r} must be snake_case")
            key = (action.entity, action.name)
            if key in out:
                raise ValueError(
                    f"record action {action.entity}/{action.name} is registered by both "
                    f"{out[key].plugin} and {plugin}"
                )
            out[key] = action
    _ACTIONS[crm] = out
    return out


def _call_with_accepted(func: Callable[..., Any], **kwargs: Any) -> Any:
    """Call ``func`` with the keyword arguments it declares (all of them if it takes ``**kw``)."""
    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return func(**kwargs)
    return func(**{k: v for k, v in kwargs.items() if k in params})


# ------------------------------------------------------------------------------------------------
# Errors and responses
# ------------------------------------------------------------------------------------------------


class APIError(Exception):
    """An HTTP error answered as ``{"errors": [{"field", "message"}], ...extra}``."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str = "",
        *,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, str]] | None = None,
        **extra: Any,
    ):
        super().__init__(message)
        self.status = status
        self.errors = errors or [{"field": field, "message": message}]
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> Response:
        return _json({"errors": self.errors, **self.extra}, self.status, self.headers)


def _json(content: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    # Records are private data: no shared cache may keep them.
    return APIResponse(content, status, {"cache-control": "no-store", **(headers or {})})


def _etag(record: Mapping[str, Any]) -> dict[str, str]:
    return {"etag": f'"{record["version"]}"'} if record.get("version") is not None else {}


def error_response(exc: Exception) -> Response:
    """The HTTP answer for an exception raised while serving an API request."""
    if isinstance(exc, APIError):
        return exc.response()
    if isinstance(exc, ValidationError):
        return _json({"errors": exc.errors}, 422)
    if isinstance(exc, ConflictError):
        body: dict[str, Any] = {"errors": [{"field": "version", "message": str(exc)}]}
        if exc.current is not None:
            body["current"] = exc.current
        return _json(body, 409, _etag(exc.current or {}))
    if isinstance(exc, BadRequest):
        return _json({"errors": [{"field": getattr(exc, "field", "") or "", "message": str(exc)}]}, 400)
    if isinstance(exc, CRMError):  # NotFound 404, PermissionDenied 403, and any other expected error
        return _json({"errors": [{"field": "", "message": str(exc)}]}, exc.status)
    if isinstance(exc, PluginError):
        log.error("plugin %s failed in %s", exc.plugin, exc.hook, exc_info=exc.error)
        return _json({"errors": [{"field": "", "message": f"plugin {exc.plugin} failed: {exc.error}"}]}, 422)
    log.exception("unexpected error in the REST API", exc_info=exc)
    return _json({"errors": [{"field": "", "message": "internal server error"}]}, 500)


# ------------------------------------------------------------------------------------------------
# Request parsing
# ------------------------------------------------------------------------------------------------


async def read_json(request: Request, *, empty: Any = None) -> Any:
    """The request body as JSON (``empty`` when there is none); 413 past MAX_BODY."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise APIError(413, f"the body is larger than {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise APIError(413, f"the body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data.strip():
        return empty
    try:
        return loads(data)
    except BadJSON as exc:
        raise APIError(422 if exc.field else 400, str(exc), exc.field) from None


async def read_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object (``{}`` when empty); 422 for any other JSON value."""
    body = await read_json(request, empty={})
    if not isinstance(body, dict):
        raise APIError(422, f"the body must be a JSON object, not {type(body).__name__}")
    return body


def parse_version(value: Any, source: str = "version") -> int | None:
    """A record version from the body, a query parameter or If-Match; 422 when malformed."""
    if value is None or value == "":
        return None
    if source == "If-Match":
        m = _IF_MATCH.fullmatch(value)
        if not m:
            raise APIError(422, 'If-Match must be the ETag of the record (its version, e.g. "3")', "version")
        value = m.group(1)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise APIError(422, "must be a whole number (the record's version)", "version")
    if isinstance(value, str) and not value.strip().isdigit():
        raise APIError(422, "must be a whole number (the record's version)", "version")
    number = int(value)
    if number < 1 or number > 2**62:
        raise APIError(422, "must be a positive whole number (the record's version)", "version")
    return number


def _version(request: Request, given: Any) -> int | None:
    """The version from the body/query and the If-Match header; both must agree when both are given."""
    from_body = parse_version(given)
    from_header = parse_version(request.headers.get("if-match"), "If-Match")
    if from_body is not None and from_header is not None and from_body != from_header:
        raise APIError(422, "the version in the body and the If-Match header differ", "version")
    return from_body if from_body is not None else from_header


def condition_paths(cond: Any) -> list[str]:
    """Every field path a condition tests (``all``/``any``/``not`` followed)."""
    out: list[str] = []
    stack = [cond]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key in ("all", "any", "not"):
                    stack.append(value)
                else:
                    out.append(key)
    return out


def _query_text(request: Request, name: str, max_length: int = 4000) -> str | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    problem = text_problem(value)
    if problem:
        raise APIError(422, problem, name)
    if len(value) > max_length:
        raise APIError(422, f"must be at most {max_length} characters", name)
    return value


# ------------------------------------------------------------------------------------------------
# The API
# ------------------------------------------------------------------------------------------------


class API:
    """The endpoints of one CRM's REST API."""

    def __init__(self, crm: CRM):
        self.crm = crm
        self.store = crm.records
        self.actions = record_actions(crm)
        self._openapi: dict[str, Any] | None = None

    # -- plumbing ---------------------------------------------------------------------------
    async def _serve(self, request: Request, handler: Callable[..., Any]) -> Response:
        try:
            actor = await self._authenticate(request)
            return await handler(request, actor)
        except Exception as exc:  # every error becomes a JSON answer; unexpected ones are logged
            return error_response(exc)

    async def _authenticate(self, request: Request) -> Actor:
        actor = await run_in_threadpool(self.crm.pm.hook.actor_from_request, crm=self.crm, request=request)
        by_token = getattr(request.state, "auth_method", None) == AUTH_METHOD
        challenge = {"www-authenticate": 'Bearer realm="crmkit"'}
        if bearer_token(request) is not None and not by_token:
            # A bad token is refused even when a session cookie comes along: never fall back.
            raise APIError(401, "invalid or revoked API token", headers=challenge)
        if actor is None:
            raise APIError(
                401, "authentication required: send Authorization: Bearer <token>", headers=challenge
            )
        if not by_token:
            self._check_csrf(request)
        return actor

    @staticmethod
    def _check_csrf(request: Request) -> None:
        """Cookie-session writes (not GET/HEAD) must echo the session's CSRF token in ``X-CSRF-Token``."""
        from crmkit.web.auth import csrf_ok  # one CSRF rule for admin forms and API calls

        if not csrf_ok(request):
            raise APIError(403, "missing or invalid X-CSRF-Token header (or a cross-site request)")

    def _entity(self, request: Request) -> str:
        name = request.path_params["entity"]
        if name not in self.crm.catalog:
            raise APIError(404, f"no entity {name!r}")
        return name

    def _id(self, request: Request, entity: str) -> int:
        raw = request.path_params["id"]
        if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_ID:
            raise APIError(404, f"no {entity} with id {raw!r}")
        return int(raw)

    @staticmethod
    def _method_not_allowed(request: Request, allowed: tuple[str, ...]) -> APIError:
        return APIError(405, f"{request.method} is not allowed here", headers={"allow": ", ".join(allowed)})

    # -- endpoints --------------------------------------------------------------------------
    async def _dispatch(self, request: Request, handlers: dict[str, Callable[..., Any]]) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        if method not in handlers:
            return self._method_not_allowed(request, tuple(handlers)).response()
        return await self._serve(request, handlers[method])

    async def collection(self, request: Request) -> Response:
        """GET: list (filter, q, sort, cursor, limit, fields); POST: create."""
        return await self._dispatch(request, {"GET": self._list, "POST": self._create})

    async def item(self, request: Request) -> Response:
        """GET one record, PATCH it, DELETE it."""
        return await self._dispatch(
            request, {"GET": self._get, "PATCH": self._update, "DELETE": self._delete}
        )

    async def action(self, request: Request) -> Response:
        """POST: run a plugin's record action."""
        return await self._dispatch(request, {"POST": self._action})

    async def openapi(self, request: Request) -> Response:
        """The OpenAPI 3.1 document of this CRM's API (for authenticated callers)."""
        return await self._dispatch(request, {"GET": self._openapi_document})

    async def not_found(self, request: Request) -> Response:
        """Unknown paths under /api/v1 answer JSON too."""
        return APIError(404, f"no such API endpoint: {request.url.path}").response()

    # -- handlers ---------------------------------------------------------------------------
    async def _openapi_document(self, request: Request, actor: Actor) -> Response:
        if self._openapi is None:  # built once: the catalog and the actions are fixed per CRM
            from crmkit.web.openapi import build_openapi

            self._openapi = build_openapi(self.crm, self.actions)
        return _json(self._openapi)

    async def _list(self, request: Request, actor: Actor) -> Response:
        entity = self._entity(request)
        kwargs = self._list_arguments(request, entity, actor)
        page = await run_in_threadpool(self.store.list, entity, actor=actor, **kwargs)
        count = page.count if page.count is None or not page.count_capped else f"{page.count}+"
        return _json({"items": page.items, "next_cursor": page.next_cursor, "count": count})

    def _list_arguments(self, request: Request, entity: str, actor: Actor) -> dict[str, Any]:
        """Validate the list's query parameters, naming the parameter in every error."""
        ent = self.crm.catalog[entity]
        raw_filter = _query_text(request, "filter", 20_000)
        flt = None
        if raw_filter is not None and raw_filter.strip():
            try:
                flt = loads(raw_filter.encode())
            except BadJSON as exc:
                raise APIError(400, f"filter: {exc}", "filter") from None
            if not isinstance(flt, dict):
                raise APIError(400, "filter must be a JSON object (a condition)", "filter")
            problems = conditions.check(flt, ent, self.crm.catalog)
            if problems:
                raise APIError(400, "invalid filter: " + "; ".join(m for _path, m in problems), "filter")
            for path in condition_paths(flt):
                self._require_readable(actor, entity, path, "filter")
        q = _query_text(request, "q", MAX_Q)
        if q and q.strip():
            if SEARCH_COLUMN not in self.crm.table(entity).c:
                raise APIError(400, f"{entity} has no searchable fields", "q")
            # The search text folds every search field together, masked ones included: searching it
            # would reveal them one substring at a time.
            for path in ent.search_paths:
                self._require_readable(actor, entity, path, "search")
        sort = _query_text(request, "sort", 1000) or None
        try:
            keys = queries.parse_sort(ent, sort)
        except BadRequest as exc:
            raise APIError(400, str(exc), "sort") from None
        for key in keys if sort else ():  # the entity's default sort is the admin's choice, not a probe
            self._require_readable(actor, entity, key.field, "sort")
        cursor = _query_text(request, "cursor", 4000) or None
        if cursor:
            try:
                check_text(queries.decode_cursor(keys, cursor))
            except (BadRequest, BadJSON):
                raise APIError(
                    400, "invalid cursor (it belongs to another sort, or was changed)", "cursor"
                ) from None
        limit = _query_text(request, "limit", 10)
        if limit is not None:
            if not limit.strip().isdigit() or not 1 <= int(limit) <= queries.MAX_LIMIT:
                raise APIError(422, f"must be a whole number from 1 to {queries.MAX_LIMIT}", "limit")
            limit = int(limit)
        columns = None
        fields = _query_text(request, "fields", 4000)
        if fields:
            columns = [c.strip() for c in fields.split(",") if c.strip()]
            unknown = [c for c in columns if c not in ent.fields or c == SEARCH_COLUMN]
            if unknown:
                raise APIError(400, f"{entity} has no field {unknown[0]!r}", "fields")
        return {"filter": flt, "q": q, "sort": sort, "cursor": cursor, "limit": limit, "columns": columns}

    def _require_readable(self, actor: Actor, entity: str, path: str, use: str) -> None:
        """Refuse filtering/sorting/searching by a masked or hidden field: answers would reveal it."""
        steps = self.crm.catalog.resolve_path(entity, path)  # conditions.check has vetted the path
        for ent, f in steps:
            if self.store.field_access(actor, ent.name).get(f.name, "read") not in ("read", "write"):
                if use == "search":
                    raise APIError(
                        400,
                        f"search on {entity} is not available to your role: it would match {path!r}, "
                        "which is hidden from you; filter instead",
                        "q",
                    )
                raise APIError(
                    400, f"you may not {use} by {path!r}: its values are hidden from your role", use
                )

    async def _get(self, request: Request, actor: Actor) -> Response:
        entity = self._entity(request)
        record = await run_in_threadpool(self.store.get, entity, self._id(request, entity), actor=actor)
        return _json(record, 200, _etag(record))

    async def _create(self, request: Request, actor: Actor) -> Response:
        entity = self._entity(request)
        values = await read_object(request)
        from crmkit.core.duplicates import allowed_flag, possible_duplicates

        confirmed = allowed_flag(request.query_params.get("allow_duplicates")) or allowed_flag(
            request.headers.get("x-allow-duplicates")
        )
        if not confirmed:  # the duplicate_candidates hooks; the caller confirms to create anyway
            found = await run_in_threadpool(possible_duplicates, self.crm, entity, values, actor)
            if found:
                raise APIError(
                    409,
                    f"{len(found)} possible duplicate(s) exist; repeat with ?allow_duplicates=true to create anyway",
                    duplicates=found,
                )
        record = await run_in_threadpool(self.store.create, entity, values, actor=actor, source="api")
        headers = {"location": f"{PREFIX}/{entity}/{record['id']}", **_etag(record)}
        return _json(record, 201, headers)

    async def _update(self, request: Request, actor: Actor) -> Response:
        entity = self._entity(request)
        id = self._id(request, entity)
        values = await read_object(request)
        version = _version(request, values.pop("version", None))
        record = await run_in_threadpool(
            self.store.update, entity, id, values, actor=actor, version=version, source="api"
        )
        return _json(record, 200, _etag(record))

    async def _delete(self, request: Request, actor: Actor) -> Response:
        entity = self._entity(request)
        id = self._id(request, entity)
        version = _version(request, _query_text(request, "version", 20))
        await run_in_threadpool(self.store.delete, entity, id, actor=actor, version=version, source="api")
        return Response(status_code=204, headers={"cache-control": "no-store"})

    async def _action(self, request: Request, actor: Actor) -> Response:
        entity = self._entity(request)
        id = self._id(request, entity)
        name = request.path_params["action"]
        action = self.actions.get((entity, name))
        if action is None:
            raise APIError(404, f"{entity} has no action {name!r}")
        payload = await read_object(request)
        # Reading first means a record the caller may not see is a 404 before any plugin code runs.
        record = await run_in_threadpool(self.store.get, entity, id, actor=actor)

        def run() -> Any:
            try:
                return _call_with_accepted(
                    action.handler, crm=self.crm, entity=entity, record=record, payload=payload, actor=actor
                )
            except (CRMError, PluginError):
                raise
            except Exception as exc:  # a bug in the plugin: name it, as record hooks do
                raise PluginError(action.plugin, f"action {entity}/{name}", exc) from exc

        result = await run_in_threadpool(run)
        if result is None:
            result = {}
        if not isinstance(result, Mapping):
            raise PluginError(
                action.plugin,
                f"action {entity}/{name}",
                TypeError(f"returned {type(result).__name__}, not a mapping of records"),
            )
        return _json(dict(result))


def api_routes(crm: CRM) -> list[BaseRoute]:
    """The REST API's routes for ``crm`` (mounted by :func:`crmkit.web.app.build_app`)."""
    api = API(crm)
    any_method = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return [
        Route(f"{PREFIX}/openapi.json", api.openapi, methods=any_method, name="api_openapi"),
        Route(PREFIX + "/{entity}", api.collection, methods=any_method, name="api_collection"),
        Route(PREFIX + "/{entity}/{id}", api.item, methods=any_method, name="api_item"),
        Route(PREFIX + "/{entity}/{id}/{action}", api.action, methods=any_method, name="api_action"),
        Route(PREFIX + "/{rest:path}", api.not_found, methods=any_method, name="api_not_found"),
    ]


__all__ = ["API", "APIError", "PREFIX", "RecordAction", "api_routes", "error_response", "record_actions"]
