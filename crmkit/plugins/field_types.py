"""The built-in field types, registered through the public ``register_field_types`` hook."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
import unicodedata
from typing import Any

import sqlalchemy as sa

from crmkit.core.fieldtypes import FieldType, InvalidValue
from crmkit.hookspecs import hookimpl

_LABEL = {"$ref": "#/$defs/label"}
_OPTION_LIST = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["value"],
        "properties": {
            "value": {"type": "string", "minLength": 1, "maxLength": 50},
            "label": _LABEL,
            "color": {"type": "string", "pattern": "^#[0-9a-fA-F]{3,8}$"},
            "system": {"type": "boolean", "description": "Set by a workflow only (e.g. a converted lead): shown "
                       "and filterable, but not offered in forms."},
        },
    },
}
_NUMBER = {"type": "number"}
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE_RE = re.compile(r"^\+?[0-9()\-\s.]{6,30}$")
_URL_RE = re.compile(r"^https?://[^\s/$.?#][^\s]*$", re.IGNORECASE)
COMPARE_OPS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "between", "is_null")
TEXT_OPS = ("eq", "ne", "in", "not_in", "contains", "startswith", "is_null")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _bounds(f, value):
    lo, hi = f.spec.get("min"), f.spec.get("max")
    if lo is not None and value < decimal.Decimal(str(lo)):
        raise InvalidValue(f"must be at least {lo}")
    if hi is not None and value > decimal.Decimal(str(hi)):
        raise InvalidValue(f"must be at most {hi}")
    return value


def coerce_string(f, value):
    if value.__class__ is str:  # the common case: one strip tells blank and gives the value
        stripped = value.strip()
        if not stripped:
            return None
        if f.type != "text":
            value = stripped
    else:
        if _blank(value):
            return None
        if isinstance(value, bool | dict | list):
            raise InvalidValue("must be text")
        value = str(value)
        value = value.strip() if f.type != "text" else value
    spec = f.spec
    maxlen = spec.get("max_length")
    if maxlen and len(value) > maxlen:
        raise InvalidValue(f"must be at most {maxlen} characters (got {len(value)})")
    minlen = spec.get("min_length")
    if minlen and len(value) < minlen:
        raise InvalidValue(f"must be at least {minlen} characters")
    pattern = spec.get("pattern")
    if pattern and not re.fullmatch(pattern, value):
        raise InvalidValue(f"must match the pattern {pattern}")
    return value


def coerce_integer(f, value):
    if _blank(value):
        return None
    if isinstance(value, bool):
        raise InvalidValue("must be a whole number")
    try:
        if isinstance(value, str):
            value = value.strip().replace(",", "")
        number = decimal.Decimal(value) if not isinstance(value, int) else value
        if isinstance(number, decimal.Decimal) and number != number.to_integral_value():
            raise InvalidValue("must be a whole number")
        value = int(number)
    except (decimal.InvalidOperation, ValueError, TypeError):
        raise InvalidValue("must be a whole number") from None
    if abs(value) > 2**63 - 1:
        raise InvalidValue("is too large")
    return _bounds(f, value)


def coerce_decimal(f, value):
    if _blank(value):
        return None
    if isinstance(value, bool):
        raise InvalidValue("must be a number")
    try:
        if isinstance(value, str):
            value = value.strip().replace(",", "").replace("¥", "").replace("￥", "").replace("%", "")
        number = decimal.Decimal(str(value)) if isinstance(value, float) else decimal.Decimal(value)
    except (decimal.InvalidOperation, ValueError, TypeError):
        raise InvalidValue("must be a number") from None
    if not number.is_finite():
        raise InvalidValue("must be a number")
    scale = f.spec.get("scale", 2 if f.type in ("money", "percent") else 6)
    if abs(number) >= decimal.Decimal(10) ** (18 - scale):  # before quantize: it raises past 28 digits
        raise InvalidValue("is too large")
    number = number.quantize(decimal.Decimal(1).scaleb(-scale), rounding=decimal.ROUND_HALF_UP)
    if abs(number) >= decimal.Decimal(10) ** (18 - scale):
        raise InvalidValue("is too large")
    if f.type == "percent":
        lo, hi = f.spec.get("min", 0), f.spec.get("max", 100)
        if number < lo or number > hi:
            raise InvalidValue(f"must be between {lo} and {hi}")
    return _bounds(f, number)


def coerce_boolean(f, value):
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on", "y", "t", "はい"):
        return True
    if text in ("0", "false", "no", "off", "n", "f", "いいえ"):
        return False
    raise InvalidValue("must be true or false")


def coerce_date(f, value):
    if _blank(value):
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        result = value
    else:
        text = str(value).strip().replace("/", "-")
        try:
            result = dt.date.fromisoformat(text[:10] if len(text) > 10 and "T" in text else text)
        except ValueError:
            raise InvalidValue("must be a date (YYYY-MM-DD)") from None
    lo, hi = f.spec.get("min"), f.spec.get("max")
    if lo and result < dt.date.fromisoformat(str(lo)):
        raise InvalidValue(f"must be on or after {lo}")
    if hi and result > dt.date.fromisoformat(str(hi)):
        raise InvalidValue(f"must be on or before {hi}")
    return result


def coerce_datetime(f, value):
    """Datetimes are stored in UTC; naive input is taken as UTC (forms send the offset)."""
    if _blank(value):
        return None
    if isinstance(value, dt.datetime):
        result = value
    elif isinstance(value, dt.date):
        result = dt.datetime(value.year, value.month, value.day)
    else:
        text = str(value).strip().replace("/", "-")
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            result = dt.datetime.fromisoformat(text)
        except ValueError:
            raise InvalidValue("must be a date and time (YYYY-MM-DD HH:MM)") from None
    if result.tzinfo is None:
        result = result.replace(tzinfo=dt.UTC)
    try:
        return result.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00+09:00 is before year 1 in UTC
        raise InvalidValue("is out of range") from None


def coerce_email(f, value):
    value = coerce_string(f, value)
    if value is None:
        return None
    if not _EMAIL_RE.match(value) or len(value) > 254:
        raise InvalidValue("must be an email address like name@example.com")
    return value


def coerce_phone(f, value):
    value = coerce_string(f, value)
    if value is None:
        return None
    if not value.isascii():  # ASCII is its own NFKC form and holds none of the dashes replaced
        value = unicodedata.normalize("NFKC", value).replace("ー", "-").replace("‐", "-").replace("−", "-")
    if not _PHONE_RE.match(value) or sum(map(str.isdigit, value)) < 6:
        raise InvalidValue("must be a phone number (digits, spaces, +, -, parentheses)")
    return value


def coerce_url(f, value):
    value = coerce_string(f, value)
    if value is None:
        return None
    if "://" not in value:
        value = "https://" + value
    if not _URL_RE.match(value):
        raise InvalidValue("must be a web address starting with http:// or https://")
    return value


def coerce_enum(f, value):
    if value.__class__ is str:
        value = value.strip()
        if not value:
            return None
    elif _blank(value):
        return None
    else:
        value = str(value).strip()
    found = _enum_lookup(f.options).get(value)
    if found is not None:
        return found
    for opt in f.options:  # not found: the loop the lookup stands for, then the error
        if value == opt.value or value in opt.label.values():
            return opt.value
    allowed = ", ".join(o.value for o in f.options)
    raise InvalidValue(f"must be one of: {allowed}")


_ENUM_LOOKUPS: dict[int, tuple[tuple[Any, ...], dict[str, str]]] = {}


def _enum_lookup(options: tuple[Any, ...]) -> dict[str, str]:
    """``text -> option value`` of a field's (immutable) options: what coerce_enum's loop finds first.

    Keyed by the options tuple's id, with the tuple kept so the id cannot be reused; bounded by
    clearing (a process loads few catalogs).
    """
    entry = _ENUM_LOOKUPS.get(id(options))
    if entry is not None and entry[0] is options:
        return entry[1]
    lookup: dict[str, str] = {}
    for opt in options:  # the first option whose value or label equals the text wins, as in the loop
        for text in (opt.value, *opt.label.values()):
            if isinstance(text, str):
                lookup.setdefault(text, opt.value)
    if type(options) is tuple:  # a list could change under the cache
        if len(_ENUM_LOOKUPS) >= 4096:
            _ENUM_LOOKUPS.clear()
        _ENUM_LOOKUPS[id(options)] = (options, lookup)
    return lookup


def coerce_multi_enum(f, value):
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        value = [v for v in re.split(r"[,;、]", value) if v.strip()]
    if not isinstance(value, list | tuple | set):
        raise InvalidValue("must be a list of options")
    out: list[str] = []
    for item in value:
        v = coerce_enum(f, item)
        if v is not None and v not in out:
            out.append(v)
    return out or None


def coerce_reference(f, value):
    if _blank(value):
        return None
    if isinstance(value, dict) and "id" in value:
        value = value["id"]
    if isinstance(value, bool):
        raise InvalidValue("must be the id of a record")
    try:
        ref = int(str(value).strip())
    except (TypeError, ValueError):
        raise InvalidValue("must be the id of a record") from None
    if ref <= 0 or ref > 2**31 - 1:  # id columns are 32-bit; larger ints overflow SQLite's driver
        raise InvalidValue("must be the id of a record")
    return ref


def coerce_references(f, value):
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value) if v]
    if not isinstance(value, list | tuple):
        raise InvalidValue("must be a list of record ids")
    out = []
    for item in value:
        if isinstance(item, dict):
            row = {"id": coerce_reference(f, item.get("id"))}
            row.update({k: v for k, v in item.items() if k != "id"})
            out.append(row)
        else:
            out.append({"id": coerce_reference(f, item)})
    return out


_ADDRESS_KEYS = ("postal_code", "prefecture", "city", "street", "building", "country")


def coerce_address(f, value):
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        value = {"street": value.strip()}
    if not isinstance(value, dict):
        raise InvalidValue("must be an address")
    unknown = set(value) - set(_ADDRESS_KEYS)
    if unknown:
        raise InvalidValue(f"unknown address parts: {', '.join(sorted(unknown))}")
    cleaned = {k: str(v).strip() for k, v in value.items() if not _blank(v)}
    return cleaned or None


def coerce_json(f, value):
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except ValueError as exc:
            raise InvalidValue(f"must be valid JSON ({exc.msg})") from None
    return value


def coerce_password(f, value):
    """Plain text in, argon2 hash out; an already hashed value is kept as it is."""
    if _blank(value):
        return None
    value = str(value)
    if value.startswith("$argon2"):
        return value
    if len(value) < 8:
        raise InvalidValue("must be at least 8 characters")
    from crmkit.core.passwords import hash_password

    return hash_password(value)


def coerce_file(f, value):
    if _blank(value):
        return None
    return coerce_string(f, value)


def _money(f):
    return sa.Numeric(18, f.spec.get("scale", 2))


BUILTIN_TYPES = [
    FieldType("string", lambda f: sa.String(f.spec.get("max_length") or 255), coerce_string,
              {"max_length": {"type": "integer", "minimum": 1, "maximum": 10000},
               "min_length": {"type": "integer", "minimum": 0}, "pattern": {"type": "string"}},
              widget="text", operators=TEXT_OPS, searchable=True, description="A single line of text."),
    FieldType("text", lambda f: sa.Text(), coerce_string, {"max_length": {"type": "integer", "minimum": 1}},
              widget="textarea", operators=TEXT_OPS, searchable=True, sortable=False,
              description="Several lines of text."),
    FieldType("integer", lambda f: sa.BigInteger().with_variant(sa.Integer(), "sqlite"), coerce_integer,
              {"min": _NUMBER, "max": _NUMBER}, widget="number", operators=COMPARE_OPS,
              description="A whole number."),
    FieldType("decimal", lambda f: sa.Numeric(24, f.spec.get("scale", 6)), coerce_decimal,
              {"min": _NUMBER, "max": _NUMBER, "scale": {"type": "integer", "minimum": 0, "maximum": 10}},
              widget="decimal", operators=COMPARE_OPS, description="A decimal number."),
    FieldType("money", _money, coerce_decimal,
              {"min": _NUMBER, "max": _NUMBER, "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}},
              widget="money", operators=COMPARE_OPS, description="An amount of money (18 digits, 2 decimals)."),
    FieldType("percent", lambda f: sa.Numeric(7, 2), coerce_decimal, {"min": _NUMBER, "max": _NUMBER},
              widget="percent", operators=COMPARE_OPS, description="A percentage from 0 to 100."),
    FieldType("boolean", lambda f: sa.Boolean(), coerce_boolean, {}, widget="checkbox",
              operators=("eq", "ne", "is_null"), description="Yes or no."),
    FieldType("date", lambda f: sa.Date(), coerce_date, {"min": {"type": "string"}, "max": {"type": "string"}},
              widget="date", operators=COMPARE_OPS, description="A calendar date."),
    FieldType("datetime", lambda f: sa.DateTime(timezone=True), coerce_datetime, {}, widget="datetime",
              operators=COMPARE_OPS, description="A date and time (stored in UTC)."),
    FieldType("email", lambda f: sa.String(254), coerce_email, {}, widget="email", operators=TEXT_OPS,
              searchable=True, description="An email address, shown as a mailto: link."),
    FieldType("phone", lambda f: sa.String(40), coerce_phone, {}, widget="tel", operators=TEXT_OPS,
              searchable=True, description="A phone number, shown as a tel: link."),
    FieldType("url", lambda f: sa.String(2000), coerce_url, {}, widget="url", operators=TEXT_OPS,
              searchable=True, description="A web address, shown as a link."),
    FieldType("enum", lambda f: sa.String(50), coerce_enum, {"options": _OPTION_LIST},
              required_options=("options",), widget="select", operators=("eq", "ne", "in", "not_in", "is_null"),
              description="One choice from a list of options with en/ja labels and colours."),
    FieldType("multi_enum", lambda f: sa.JSON(), coerce_multi_enum, {"options": _OPTION_LIST},
              required_options=("options",), widget="multiselect", operators=("contains", "is_null"),
              sortable=False, description="Several choices from a list of options."),
    FieldType("reference", lambda f: sa.Integer(), coerce_reference,
              {"to": {"type": "string"}, "on_delete": {"enum": ["restrict", "cascade", "set_null"]},
               "inverse": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"}},
              required_options=("to",), widget="reference", operators=("eq", "ne", "in", "not_in", "is_null"),
              description="A link to one record of another entity."),
    FieldType("references", lambda f: None, coerce_references,
              {"to": {"type": "string"}, "inverse": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
               "through": {"type": "object", "additionalProperties": {"$ref": "#/$defs/field"}}},
              required_options=("to",), widget="references", operators=(), sortable=False,
              description="Links to many records (a link table, optionally with its own fields)."),
    FieldType("file", lambda f: sa.String(500), coerce_file,
              {"accept": {"type": "string"}, "max_size": {"type": "integer", "minimum": 1}},
              widget="file", operators=("is_null",), sortable=False, description="An uploaded file."),
    FieldType("image", lambda f: sa.String(500), coerce_file,
              {"accept": {"type": "string"}, "max_size": {"type": "integer", "minimum": 1}},
              widget="image", operators=("is_null",), sortable=False, description="An uploaded image."),
    FieldType("address", lambda f: sa.JSON(), coerce_address, {}, widget="address", operators=("is_null",),
              searchable=True, sortable=False,
              description="A postal address (postal_code, prefecture, city, street, building, country)."),
    FieldType("json", lambda f: sa.JSON(), coerce_json, {}, widget="json", operators=("is_null",),
              sortable=False, description="Free-form JSON data."),
    FieldType("password", lambda f: sa.String(255), coerce_password, {}, widget="password", operators=(),
              sortable=False, description="A password, stored as an argon2 hash and never shown."),
]


@hookimpl
def register_field_types(crm):
    """The ~20 field types of DESIGN §3."""
    return BUILTIN_TYPES
