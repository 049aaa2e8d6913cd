"""The OpenAPI 3.1 document of the REST API, generated from the Catalog.

Per entity: a read schema (what GET answers), a create schema (POST body), an update schema
(PATCH body, with ``version``) and a page schema (lists); paths for list/create/get/update/delete
and for every registered record action. JSON Schema keywords come from the field YAML:
``required``, ``max_length`` -> ``maxLength``, ``min``/``max``, enum options, formats.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from crmkit.core import queries
from crmkit.core.catalog import Entity, Field

if TYPE_CHECKING:
    from crmkit.app import CRM
    from crmkit.web.api import RecordAction

PREFIX = "/api/v1"
MAX_ID = 2**31 - 1
MAX_INT = 2**63 - 1
DECIMAL_PATTERN = r"^-?[0-9]{1,18}(\.[0-9]{1,10})?$"
ADDRESS_PARTS = ("postal_code", "prefecture", "city", "street", "building", "country")
STRING_TYPES = {
    "string": None,
    "text": None,
    "email": 254,
    "phone": 40,
    "url": 2000,
    "file": 500,
    "image": 500,
}
FORMATS = {"email": "email", "url": "uri"}
ERROR_RESPONSES = {
    "400": "Malformed query: unknown filter field, bad sort or cursor, unparsable JSON.",
    "401": "No valid credentials (missing, unknown or revoked token).",
    "403": "The caller may not do this (role permissions), or a session write lacks X-CSRF-Token.",
    "404": "No such entity or record, or the caller may not see the record.",
    "422": "Invalid input: one message per field.",
}

DESCRIPTION = """\
The REST API of a crmkit CRM, generated from its entity schemas.

* Authenticate with `Authorization: Bearer <token>` (`crmkit token create USERNAME`).
* Decimal values (money, decimal, percent) are **strings** in fixed-point notation (`"1500000.00"`),
  so no precision is lost in JavaScript; numbers are accepted on input too. Dates are `YYYY-MM-DD`,
  datetimes ISO 8601 with their UTC offset.
* Lists answer `{"items": [...], "next_cursor": "..." | null, "count": 123 | "10000+"}`; pass
  `next_cursor` back as `cursor` for the next page (keyset pagination: no gaps, no duplicates).
* Errors answer `{"errors": [{"field": "email", "message": "..."}]}`; a stale `version` answers 409
  with the stored record in `current`.
* Fields your role may not see are left out; masked fields come back as strings like `••••1234`.
"""


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """The same schema also allowing JSON null (OpenAPI 3.1 style)."""
    if not schema:
        return schema
    out = dict(schema)
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    if isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    elif "anyOf" in out:
        out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    return out


def _anchored(pattern: str) -> str:
    # The store applies the YAML pattern with re.fullmatch; JSON Schema patterns search.
    return pattern if pattern.startswith("^") and pattern.endswith("$") else f"^(?:{pattern})$"


def _number_bounds(f: Field, default_min: Any = None, default_max: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    lo, hi = f.spec.get("min", default_min), f.spec.get("max", default_max)
    if lo is not None:
        out["minimum"] = lo
    if hi is not None:
        out["maximum"] = hi
    return out


def field_schema(f: Field, write: bool = False) -> dict[str, Any]:
    """The JSON Schema of one field's value (without null), for reading or for writing."""
    t = f.type
    if t in STRING_TYPES:
        schema: dict[str, Any] = {"type": "string"}
        max_len = f.spec.get("max_length") or STRING_TYPES[t] or (255 if t == "string" else None)
        if max_len:
            schema["maxLength"] = max_len
        if f.spec.get("min_length"):
            schema["minLength"] = f.spec["min_length"]
        if f.spec.get("pattern"):
            schema["pattern"] = _anchored(f.spec["pattern"])
        if t in FORMATS:
            schema["format"] = FORMATS[t]
        return schema
    if t == "integer":
        return {"type": "integer", **_number_bounds(f, -MAX_INT, MAX_INT)}
    if t in ("decimal", "money", "percent"):
        bounds = _number_bounds(f, *((0, 100) if t == "percent" else (None, None)))
        text = {"type": "string", "format": "decimal", "pattern": DECIMAL_PATTERN}
        if not write:
            return {
                **text,
                **({"x-minimum": bounds["minimum"]} if "minimum" in bounds else {}),
                **({"x-maximum": bounds["maximum"]} if "maximum" in bounds else {}),
            }
        limit = 10 ** (16 if t == "money" else 12) - 1
        number = {
            "type": "number",
            "minimum": bounds.get("minimum", -limit),
            "maximum": bounds.get("maximum", limit),
        }
        return {"anyOf": [number, text]}
    if t == "boolean":
        return {"type": "boolean"}
    if t == "date":
        return {"type": "string", "format": "date"}
    if t == "datetime":
        return {"type": "string", "format": "date-time"}
    if t == "enum":
        return {
            "type": "string",
            "enum": [o.value for o in f.options],
            "x-enum-labels": {o.value: dict(o.label) for o in f.options},
        }
    if t == "multi_enum":
        return {
            "type": "array",
            "uniqueItems": True,
            "items": {"type": "string", "enum": [o.value for o in f.options]},
        }
    if t == "reference":
        return {"type": "integer", "minimum": 1, "maximum": MAX_ID, "x-reference": f.to}
    if t == "references":
        item = {
            "type": "object",
            "required": ["id"],
            "additionalProperties": False,
            "properties": {"id": {"type": "integer", "minimum": 1, "maximum": MAX_ID}},
        }
        for name, spec in (f.spec.get("through") or {}).items():
            through = Field(name, spec.get("type", "string"), {"en": name, "ja": name}, spec)
            item["properties"][name] = _nullable(field_schema(through, write))
        items: dict[str, Any] = item
        if write:
            items = {"anyOf": [item, {"type": "integer", "minimum": 1, "maximum": MAX_ID}]}
        return {"type": "array", "items": items, "x-reference": f.to}
    if t == "address":
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {p: {"type": "string", "maxLength": 200} for p in ADDRESS_PARTS},
        }
    if t == "password":
        return {"type": "string", "minLength": 8, "maxLength": 200, "writeOnly": True}
    return {}  # json, or a plugin's type: any JSON value


def _describe(f: Field) -> dict[str, Any]:
    out: dict[str, Any] = {"title": f.text("en")}
    help_text = f.spec.get("help")
    if isinstance(help_text, Mapping):
        out["description"] = help_text.get("en") or help_text.get("ja") or ""
    elif isinstance(help_text, str):
        out["description"] = help_text
    if f.text("ja") != f.text("en"):
        out["x-label-ja"] = f.text("ja")
    return out


def _masked_somewhere(entity: Entity, name: str) -> bool:
    return any((rules or {}).get("fields", {}).get(name) == "mask" for rules in entity.permissions.values())


def _system_read_schema(entity: Entity) -> dict[str, dict[str, Any]]:
    props: dict[str, dict[str, Any]] = {
        "id": {"type": "integer", "minimum": 1, "readOnly": True},
        "created_at": {"type": "string", "format": "date-time", "readOnly": True},
        "updated_at": {"type": "string", "format": "date-time", "readOnly": True},
        "created_by": {"type": ["integer", "null"], "readOnly": True, "x-reference": "user"},
        "version": {
            "type": "integer",
            "minimum": 1,
            "readOnly": True,
            "description": "Send it back with PATCH/DELETE (or as If-Match) to refuse stale edits.",
        },
    }
    if entity.ownable:
        props["owner"] = {"type": ["integer", "null"], "x-reference": "user"}
        props["team"] = {"type": ["integer", "null"], "x-reference": "team"}
    return props


def writable_fields(entity: Entity) -> list[Field]:
    """Fields a caller may send: visible, not computed or read-only (passwords included)."""
    return [f for f in entity.visible_fields if not f.readonly]


def read_schema(entity: Entity) -> dict[str, Any]:
    """What GET answers for one record."""
    props = _system_read_schema(entity)
    for f in entity.visible_fields:
        if f.type == "password":
            continue
        schema = {**_nullable(field_schema(f)), **_describe(f)}
        if f.readonly:
            schema["readOnly"] = True
        if _masked_somewhere(entity, f.name):
            schema = {"anyOf": [schema, {"type": "string", "description": "masked for your role"}]}
        props[f.name] = schema
    return {
        "type": "object",
        "title": entity.text("en"),
        "properties": props,
        "required": ["id", "created_at", "updated_at", "version"],
    }


def write_schema(entity: Entity, create: bool) -> dict[str, Any]:
    """The POST (create) or PATCH (update) body."""
    props: dict[str, Any] = {}
    required = []
    for f in writable_fields(entity):
        props[f.name] = {**_nullable(field_schema(f, write=True)), **_describe(f)}
        if create and f.required and f.default is None:
            required.append(f.name)
            props[f.name] = {**field_schema(f, write=True), **_describe(f)}
    if entity.ownable:
        props["owner"] = {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": MAX_ID,
            "description": "User id (defaults to the caller).",
        }
        props["team"] = {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": MAX_ID,
            "description": "Team id (defaults to the caller's team).",
        }
    if not create:
        props["version"] = {
            "type": "integer",
            "minimum": 1,
            "description": "The version you read; a stale one answers 409.",
        }
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def schema_name(entity: str) -> str:
    """``deal_stage`` -> ``DealStage`` (component names)."""
    return "".join(part.capitalize() for part in entity.split("_"))


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: {"$ref": f"#/components/responses/E{code}"} for code in codes}


def _list_parameters(entity: Entity, crm: CRM) -> list[dict[str, Any]]:
    sortable = [
        n
        for n, f in entity.fields.items()
        if n != "search_text"
        and not f.is_many
        and f.type not in ("multi_enum", "json", "address", "text", "password", "file", "image")
    ]
    params: list[dict[str, Any]] = [
        {
            "name": "filter",
            "in": "query",
            "required": False,
            "description": 'A condition as JSON, e.g. `{"status": {"in": ["new", "working"]}}`; fields '
            "may be paths through references (`account.industry`). Unknown fields answer 400.",
            "content": _json_content({"type": "object"}),
        },
        {
            "name": "sort",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "maxLength": 1000},
            "description": "Comma-separated fields, `-` for descending: " + ", ".join(sortable[:40]),
        },
        {
            "name": "cursor",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "maxLength": 4000},
            "description": "The `next_cursor` of the previous page (with the same sort).",
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": queries.MAX_LIMIT,
                "default": entity.list.page_size,
            },
        },
        {
            "name": "fields",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "maxLength": 4000},
            "description": "Comma-separated fields to return (id and version always come back).",
        },
    ]
    if "search_text" in crm.table(entity.name).c:
        params.insert(
            1,
            {
                "name": "q",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "maxLength": 500},
                "description": "Search text: every word must appear (width-, kana- and case-insensitive).",
            },
        )
    return params


def _id_parameter(entity: Entity) -> dict[str, Any]:
    return {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
        "description": f"{entity.name} id",
    }


def _if_match() -> dict[str, Any]:
    return {
        "name": "If-Match",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "pattern": r'^(W/)?"?[0-9]{1,18}"?$'},
        "description": "The record's ETag (its version); an alternative to `version`.",
    }


def entity_paths(crm: CRM, entity: Entity) -> dict[str, Any]:
    """The list/create and get/update/delete paths of one entity."""
    name, s = entity.name, schema_name(entity.name)
    tag = [name]
    etag = {"ETag": {"schema": {"type": "string"}, "description": "The record's version, quoted."}}
    one = {"description": f"The {name} record.", "headers": etag, "content": _json_content(_ref(s))}
    return {
        f"{PREFIX}/{name}": {
            "get": {
                "operationId": f"list_{name}",
                "tags": tag,
                "summary": f"List {entity.text('en', plural=True)}",
                "parameters": _list_parameters(entity, crm),
                "responses": {
                    "200": {"description": "A page of records.", "content": _json_content(_ref(f"{s}Page"))},
                    **_errors("400", "401", "403", "422"),
                },
            },
            "post": {
                "operationId": f"create_{name}",
                "tags": tag,
                "summary": f"Create a {name}",
                "parameters": [{
                    "name": "allow_duplicates", "in": "query", "required": False,
                    "schema": {"type": "boolean"},
                    "description": "Create even when possible duplicates exist (also: X-Allow-Duplicates: true).",
                }],
                "requestBody": {"required": True, "content": _json_content(_ref(f"{s}Create"))},
                "responses": {
                    "201": {**one, "description": "Created."},
                    "409": {
                        "description": "Possible duplicates exist (the duplicate_candidates hooks); nothing was "
                        "created. The body lists them under `duplicates` ({id, title, rules, score}).",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_errors("400", "401", "403", "422"),
                },
            },
        },
        f"{PREFIX}/{name}/{{id}}": {
            "parameters": [_id_parameter(entity)],
            "get": {
                "operationId": f"get_{name}",
                "tags": tag,
                "summary": f"Get a {name}",
                "responses": {"200": one, **_errors("401", "403", "404")},
            },
            "patch": {
                "operationId": f"update_{name}",
                "tags": tag,
                "summary": f"Change fields of a {name}",
                "parameters": [_if_match()],
                "requestBody": {"required": True, "content": _json_content(_ref(f"{s}Update"))},
                "responses": {
                    "200": one,
                    "409": {"$ref": "#/components/responses/Conflict"},
                    **_errors("400", "401", "403", "404", "422"),
                },
            },
            "delete": {
                "operationId": f"delete_{name}",
                "tags": tag,
                "summary": f"Delete a {name}",
                "parameters": [
                    _if_match(),
                    {
                        "name": "version",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1},
                    },
                ],
                "responses": {
                    "204": {"description": "Deleted."},
                    "409": {"$ref": "#/components/responses/Conflict"},
                    **_errors("401", "403", "404", "422"),
                },
            },
        },
    }


def action_path(entity: Entity, action: RecordAction) -> dict[str, Any]:
    """``POST /api/v1/{entity}/{id}/{action}`` for one registered record action."""
    body = dict(action.input_schema) if action.input_schema else {"type": "object"}
    return {
        "parameters": [_id_parameter(entity)],
        "post": {
            "operationId": f"{entity.name}_{action.name}",
            "tags": [entity.name],
            "summary": action.description or f"{action.name} a {entity.name}",
            "description": f"Provided by plugin `{action.plugin}`. Answers the records it touched, by name.",
            "requestBody": {"required": False, "content": _json_content(body)},
            "responses": {
                "200": {
                    "description": "The records the action touched.",
                    "content": _json_content({"type": "object", "additionalProperties": True}),
                },
                **_errors("400", "401", "403", "404", "422"),
            },
        },
    }


def _components(crm: CRM) -> dict[str, Any]:
    error_item = {
        "type": "object",
        "required": ["field", "message"],
        "properties": {
            "field": {"type": "string", "description": 'The field ("" for the record).'},
            "message": {"type": "string"},
        },
    }
    schemas: dict[str, Any] = {
        "ErrorItem": error_item,
        "Error": {
            "type": "object",
            "required": ["errors"],
            "properties": {"errors": {"type": "array", "items": _ref("ErrorItem")}},
        },
        "Conflict": {
            "type": "object",
            "required": ["errors"],
            "properties": {
                "errors": {"type": "array", "items": _ref("ErrorItem")},
                "current": {"type": "object", "description": "The record as stored now."},
            },
        },
    }
    for entity in crm.catalog:
        s = schema_name(entity.name)
        schemas[s] = read_schema(entity)
        schemas[f"{s}Create"] = write_schema(entity, create=True)
        schemas[f"{s}Update"] = write_schema(entity, create=False)
        schemas[f"{s}Page"] = {
            "type": "object",
            "required": ["items", "next_cursor", "count"],
            "properties": {
                "items": {"type": "array", "items": _ref(s)},
                "next_cursor": {"type": ["string", "null"]},
                "count": {
                    "anyOf": [
                        {"type": "integer", "minimum": 0},
                        {"type": "string", "pattern": r"^[0-9]+\+$"},
                        {"type": "null"},
                    ]
                },
            },
        }
    responses = {
        f"E{code}": {"description": text, "content": _json_content(_ref("Error"))}
        for code, text in ERROR_RESPONSES.items()
    }
    responses["Conflict"] = {
        "description": "The record changed since you read it (stale version).",
        "content": _json_content(_ref("Conflict")),
    }
    security = {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "A token from `crmkit token create USERNAME`.",
        }
    }
    return {"schemas": schemas, "responses": responses, "securitySchemes": security}


def build_openapi(crm: CRM, actions: Mapping[tuple[str, str], RecordAction] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``crm``'s REST API."""
    from crmkit import __version__

    paths: dict[str, Any] = {}
    for entity in crm.catalog:
        paths.update(entity_paths(crm, entity))
    for (entity, name), action in sorted((actions or {}).items()):
        paths[f"{PREFIX}/{entity}/{{id}}/{name}"] = action_path(crm.catalog[entity], action)
    return {
        "openapi": "3.1.0",
        "info": {"title": "crmkit REST API", "version": __version__, "description": DESCRIPTION},
        "security": [{"bearerAuth": []}],
        "tags": [{"name": e.name, "description": e.text("en", plural=True)} for e in crm.catalog],
        "paths": paths,
        "components": _components(crm),
    }
