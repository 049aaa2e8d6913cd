"""crmkit: a pluggable CRM framework.

The names in ``__all__`` are the public API; everything else may change between releases.
"""

from crmkit.app import CRM
from crmkit.config import Config, load_config
from crmkit.core.catalog import Catalog, Entity, Field, Option, Relation
from crmkit.core.fieldtypes import FieldType, InvalidValue
from crmkit.core.loader import SchemaError, SchemaProblem
from crmkit.hookspecs import hookimpl, hookspec
from crmkit.plugins import PluginError

__version__ = "0.1.0"

__all__ = [
    "CRM",
    "Catalog",
    "Config",
    "Entity",
    "Field",
    "FieldType",
    "InvalidValue",
    "Option",
    "PluginError",
    "Relation",
    "SchemaError",
    "SchemaProblem",
    "__version__",
    "hookimpl",
    "hookspec",
    "load_config",
]
