"""The hooks plugins implement.

Every hook receives ``crm`` (the :class:`crmkit.CRM` being run) and is called with keyword
arguments only, so a plugin may accept just the arguments it needs (pluggy passes a subset).
Hooks return data; the core decides what to do with it. ``docs/plugin_hooks.md`` documents each
hook and a test fails when one is missing there.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("crmkit")
hookimpl = pluggy.HookimplMarker("crmkit")


# -------------------------------------------------------------------------------------------------
# Setup
# -------------------------------------------------------------------------------------------------


@hookspec
def register_hookspecs(pm: pluggy.PluginManager) -> None:
    """Add a plugin's own hookspecs to the plugin manager (``pm.add_hookspecs(module)``).

    Called once, before any other hook, for every registered plugin.

    .. versionadded:: 0.1
    """


@hookspec
def register_config_schemas(crm: Any) -> dict[str, Any] | None:
    """Return ``{section_name: json_schema}`` for the plugin's section of ``crmkit.yaml``.

    The section is validated at start-up and by ``crmkit check``; errors name the file and line.

    .. versionadded:: 0.1
    """


@hookspec
def startup(crm: Any) -> None:
    """Called once after the catalog is built and the database engine exists.

    .. versionadded:: 0.1
    """


@hookspec
def shutdown(crm: Any) -> None:
    """Called once when the CRM is closed (end of a command or server).

    .. versionadded:: 0.1
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add click commands or groups to the ``crmkit`` command line (``cli.add_command(...)``).

    .. versionadded:: 0.1
    """


@hookspec
def prepare_jinja2_environment(crm: Any, env: Any) -> None:
    """Change the admin's Jinja2 environment: add filters, globals or template loaders.

    .. versionadded:: 0.1
    """


# -------------------------------------------------------------------------------------------------
# Schema
# -------------------------------------------------------------------------------------------------


@hookspec
def schema_paths(crm: Any) -> list[str] | None:
    """Return directories (or files) of entity YAML the plugin ships.

    They load after the built-in schemas and before the company's overlays.

    .. versionadded:: 0.1
    """


@hookspec
def register_field_types(crm: Any) -> list[Any] | None:
    """Return :class:`crmkit.FieldType` objects to add field types.

    A type names its column, its value coercion, its YAML options (JSON Schema) and its widget.
    Registering a name twice is an error.

    .. versionadded:: 0.1
    """


@hookspec
def extend_entity(crm: Any, name: str, definition: dict[str, Any]) -> dict[str, Any] | None:
    """Return ``{"fields": {...}}`` to add fields to entity ``name``.

    ``definition`` is the merged YAML of the entity (read-only by convention). Prefix the field
    names with the plugin's name (``scoring_score``); a clash with another field is a load error.

    .. versionadded:: 0.1
    """


@hookspec
def schema_loaded(crm: Any, catalog: Any) -> list[str] | None:
    """Inspect the finished catalog; return problem messages to refuse it.

    Each message is reported by ``crmkit check`` and stops migrations.

    .. versionadded:: 0.1
    """


@hookspec
def check_project(crm: Any) -> list[Any] | None:
    """Check the project's other files a plugin reads (rule files, templates); return problems.

    Called by ``crmkit check`` after the CRM was built (so ``crm.catalog`` is complete). Each
    item is a message (``str``) or a :class:`crmkit.SchemaProblem` naming the file and line.
    Unlike ``schema_loaded`` problems these do not refuse the catalog: the CRM still starts, and
    the plugin decides what a bad file means at run time (e.g. keep the previous rules active).

    .. versionadded:: 0.1
    """


# -------------------------------------------------------------------------------------------------
# Records (called inside the write transaction, with ``conn`` and ``actor``)
# -------------------------------------------------------------------------------------------------


@hookspec
def validate_record(
    crm: Any, entity: Any, record: dict[str, Any], old: dict[str, Any] | None, conn: Any, actor: Any
) -> list[Any] | dict[str, str] | None:
    """Return extra validation errors for a record about to be saved.

    Return ``{field: message}`` or a list of such dicts (``""`` as the field for record-level
    messages). ``old`` is None on create. Errors refuse the save; nothing is written.

    .. versionadded:: 0.1
    """


@hookspec
def before_save(
    crm: Any, entity: Any, record: dict[str, Any], old: dict[str, Any] | None, conn: Any, actor: Any
) -> None:
    """Change ``record`` in place before it is written. Raising rolls the whole write back.

    .. versionadded:: 0.1
    """


@hookspec
def after_save(
    crm: Any, entity: Any, record: dict[str, Any], old: dict[str, Any] | None, conn: Any, actor: Any
) -> None:
    """Called after the row is written, inside the same transaction (write related rows here).

    ``crm.records.tx_for(conn)`` is that transaction: create or update related records through
    it so they are validated, audited and committed (or rolled back) together with this write.
    Raising rolls the whole write back, and the error names the plugin.

    .. versionadded:: 0.1
    """


@hookspec
def before_create_many(crm: Any, entity: Any, records: list[dict[str, Any]], conn: Any, actor: Any) -> None:
    """Bulk creates (imports): change a batch of validated new records in place before they are written.

    ``Tx.create_many`` calls it once per batch *instead of* this plugin's ``before_save`` for
    those records, so a plugin can do set-based work (one query for the whole batch). Keep
    implementing ``before_save`` too: single saves, and a batch redone row by row after an
    error, still call it. Raising rolls the batch back (it is then redone row by row).

    .. versionadded:: 0.1
    """


@hookspec
def after_create_many(crm: Any, entity: Any, records: list[dict[str, Any]], conn: Any, actor: Any) -> None:
    """Bulk creates (imports): a batch of records was written (each with its ``id``), same transaction.

    Called once per batch *instead of* this plugin's ``after_save`` for those records: write
    related rows for the whole batch at once (one ``executemany``). The created rows are not
    read back afterwards, so change them in ``before_create_many``, not here. Keep implementing
    ``after_save`` for single saves and for batches redone row by row. Raising rolls the batch back.

    .. versionadded:: 0.1
    """


@hookspec
def bulk_load_tables(crm: Any, entity: Any) -> list[str] | None:
    """Tables (besides ``entity``'s own) that an import into ``entity`` adds rows to, a row or more per record.

    A large import (see :mod:`crmkit.core.deferred_indexes`) drops the non-unique secondary
    indexes of these tables, when the import brings at least as many rows as a table holds, and
    builds them again when it ends: for a plugin's key or index tables written from
    ``after_create_many``. Queries stay correct meanwhile, only slower. Return table names on
    ``crm.metadata`` (from ``register_tables``).

    .. versionadded:: 0.1
    """


@hookspec
def before_delete(crm: Any, entity: Any, record: dict[str, Any], conn: Any, actor: Any) -> None:
    """Called before a record is deleted, inside the transaction; raise to refuse the delete.

    .. versionadded:: 0.1
    """


@hookspec
def after_delete(crm: Any, entity: Any, record: dict[str, Any], conn: Any, actor: Any) -> None:
    """Called after a record is deleted, inside the same transaction.

    .. versionadded:: 0.1
    """


@hookspec
def lead_converted(
    crm: Any,
    lead: dict[str, Any],
    account: dict[str, Any],
    contact: dict[str, Any],
    deal: dict[str, Any] | None,
    tx: Any,
    actor: Any,
) -> None:
    """Called at the end of a lead conversion, inside its transaction, to carry a plugin's data over.

    ``lead`` is the lead as it was before conversion; ``account`` (created or matched),
    ``contact`` (created) and ``deal`` (None when none was created) are the records it became.
    ``tx`` is the conversion's :class:`crmkit.core.records.Tx`: write through it (``tx.create``,
    ``tx.update``; ``tx.conn`` for a plugin's own tables) so the plugin's rows move with the
    conversion — campaign history, business-card images, scores. Raising rolls the whole
    conversion back (nothing of it remains) and the error names the plugin.

    .. versionadded:: 0.1
    """


@hookspec
def duplicate_candidates(crm: Any, entity: Any, record: dict[str, Any], actor: Any) -> list[dict[str, Any]] | None:
    """Return records that may be duplicates of ``record``, which is about to be created.

    Called by the admin's create form and by ``POST /api/v1/{entity}`` before the record is
    created; ``record`` holds the values as submitted (not yet coerced). Return
    ``[{"id", "title", "rules": [rule names], "score": 0-100}]`` with only records ``actor`` may
    read; the answers of all implementations are combined. When there are any, the form shows
    them with a "create anyway" box and the API answers 409 with ``"duplicates"``, unless the
    caller confirmed (``?allow_duplicates=true`` or ``X-Allow-Duplicates: true``). The built-in
    :mod:`crmkit.plugins.duplicates` answers from the YAML ``duplicates:`` rules.

    .. versionadded:: 0.1
    """


@hookspec
def records_merged(
    crm: Any, entity: Any, winner: dict[str, Any], losers: list[int], tx: Any, actor: Any
) -> None:
    """Called while records are merged, inside the merge's transaction, to move a plugin's own rows.

    ``winner`` is the record that stays (as it was before the merge), ``losers`` the ids of the
    records merged into it; references in entity fields and link tables have already been moved
    to the winner, and the losers are deleted right after this hook. Move rows of the plugin's
    own tables (``tx.conn``) or records (``tx.update``) from the losers to the winner here.
    Raising rolls the whole merge back and the error names the plugin.

    .. versionadded:: 0.1
    """


@hookspec
def track_event(crm: Any, event: Any) -> None:
    """Receive an event after its transaction committed (never for rolled-back writes).

    ``event`` has ``name`` (``record.created``, ``record.updated``, ``record.deleted`` or a
    plugin's own), ``entity``, ``record_id``, ``actor`` and ``data``. An exception here is logged
    and never undoes the committed write.

    .. versionadded:: 0.1
    """


# -------------------------------------------------------------------------------------------------
# Security
# -------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def actor_from_request(crm: Any, request: Any) -> Any:
    """Return the actor (user) making ``request``, or None if this plugin cannot tell.

    firstresult: the first non-None answer wins. Session login and API tokens are built-in plugins.

    .. versionadded:: 0.1
    """


@hookspec
def permission_allowed(crm: Any, actor: Any, action: str, entity: str, record: dict[str, Any] | None) -> bool | None:
    """Return False to deny ``action`` (read/create/update/delete/export/...) on ``entity``.

    ``record`` is None for entity-level checks. Any False denies; None means no opinion; the
    built-in role rules from the entity YAML are one implementation.

    .. versionadded:: 0.1
    """


@hookspec
def restrict_query(crm: Any, entity: str, actor: Any) -> Any:
    """Return a condition (condition-language data) AND-ed into every list, API and export query.

    .. versionadded:: 0.1
    """


# -------------------------------------------------------------------------------------------------
# Jobs and mail
# -------------------------------------------------------------------------------------------------


@hookspec
def register_tables(crm: Any, metadata: Any) -> list[Any] | None:
    """Define a plugin's own tables (not entities) on ``metadata`` and return them.

    For data that is not a record users edit: ledgers, queues, counters. Build each
    ``sqlalchemy.Table`` on the given ``metadata``, with a name prefixed by the plugin
    (``scoring_ledger``), so ``crmkit migrate`` creates and later alters it like the entity tables.
    They are reachable afterwards as ``crm.system_tables[name]``. Entities users see and edit
    belong in YAML (``schema_paths``) instead.

    .. versionadded:: 0.1
    """


@hookspec
def register_job_handlers(crm: Any) -> dict[str, Any] | None:
    """Return ``{job_name: handler}``; ``handler(crm, payload, conn)`` runs a background job.

    Jobs are enqueued with :func:`crmkit.core.jobs.enqueue` (``name``, JSON ``payload``, optional
    ``run_at``, idempotency ``key``, ``max_attempts``) and run by ``crmkit worker``. Name jobs
    ``plugin.action`` (``reminders.send``); a name registered twice is an error.

    ``conn`` is a SQLAlchemy connection inside a write transaction opened for this job. The
    worker marks the job done in that same transaction and commits it when the handler returns,
    so the handler's writes through ``conn`` (its own tables, :func:`crmkit.core.mail.queue_mail`
    and :func:`crmkit.core.notifications.notify` with ``conn=conn``) happen exactly once, together
    with the job's completion. Record writes go through ``crm.records.tx_for(conn)`` (a
    :class:`crmkit.core.records.Tx` acting as the system; their events fire after the commit).
    If the handler raises, they are rolled back and the job is retried
    with exponential backoff and jitter until ``max_attempts``, then marked failed (shown with its
    traceback on the admin's failed-jobs page, which can retry it). Raise
    :class:`crmkit.core.jobs.Retry` to run again later without using an attempt, or
    :class:`crmkit.core.jobs.Fail` to fail at once. :func:`crmkit.core.jobs.current_job` gives the
    attempt number and the worker's ``now``.

    Never perform an external effect (SMTP, HTTP) inside ``conn``'s transaction: record it instead
    (``queue_mail(..., conn=conn, key=...)``) and let its own job perform it once. A handler
    decorated with :func:`crmkit.core.jobs.own_transactions` gets ``conn=None`` and commits its own
    work (``crm.records.create(...)`` works there); it must then be idempotent, because a worker
    that dies mid-run leaves the job to be run again after its lease.
    ``own_transactions(batch=True)`` handlers get the list of a claimed batch's payloads in one
    call and return, per job, None or the exception it ended with.

    .. versionadded:: 0.1
    """


@hookspec
def register_periodic_jobs(crm: Any) -> list[dict[str, Any]] | None:
    """Return ``[{"name": job_name, "every": seconds, "payload": {...}}]`` to run jobs periodically.

    Each worker pass enqueues the job for the current period (periods are aligned to the Unix
    epoch) with the idempotency key ``periodic:<name>:<period start>``, so the job runs once per
    period however many workers there are; a period in which no worker ran is skipped, not made
    up. Optional ``max_attempts`` (default 3). The handler comes from ``register_job_handlers``.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def mail_transport(crm: Any) -> Any:
    """Return the object that delivers outgoing mail; SMTP is the built-in ``trylast`` default.

    firstresult: the first non-None answer is used (and cached for the CRM's life). The object
    has ``send(message, *, confirm)``: ``message`` is an :class:`email.message.EmailMessage` whose
    To/Cc/Bcc are the recipients; the transport must call ``confirm()`` right before the step that
    makes delivery irreversible (it commits "sent" in the outbox) and abandon the message if
    ``confirm()`` raises. It raises :class:`crmkit.core.mail.MailError` (``permanent=True`` for a
    refusal retrying cannot fix) or ``OSError``; transient failures are retried. An optional
    ``close()`` is called at shutdown. A ``send(message)`` without ``confirm`` also works: the
    outbox then records "sent" just before calling it.

    .. versionadded:: 0.1
    """


@hookspec
def register_notification_channels(crm: Any) -> dict[str, Any] | None:
    """Return ``{channel_name: callable(crm, user, notification, conn)}`` for more ways to notify.

    :func:`crmkit.core.notifications.notify` calls the channels named in its ``channels``
    argument (``in_app`` and ``email`` are built in) inside its transaction: ``user`` is the user
    row (dict), ``notification`` the stored notification (dict with ``id``, ``subject``, ``body``,
    ``link``, ``kind``, ``data``), ``conn`` the transaction's connection (``conn`` may be left out
    of the signature). Queue external effects through ``conn`` (for example with
    :func:`crmkit.core.jobs.enqueue` and a key naming the notification) rather than calling out.

    .. versionadded:: 0.1
    """


# -------------------------------------------------------------------------------------------------
# Admin UI
# -------------------------------------------------------------------------------------------------


@hookspec
def menu_links(crm: Any, actor: Any, request: Any) -> list[dict[str, str]] | None:
    """Return ``[{"href": ..., "label": ...}]`` to add to the admin menu for this actor.

    .. versionadded:: 0.1
    """


@hookspec
def dashboard_widgets(crm: Any, actor: Any, request: Any) -> list[dict[str, Any]] | None:
    """Return widgets ``{"title": ..., "html": Markup}`` or ``{"title", "template", "context"}``.

    .. versionadded:: 0.1
    """


@hookspec
def register_field_widgets(crm: Any) -> dict[str, str] | None:
    """Return ``{widget_name: template_name}``; a field type or ``widget:`` option selects one.

    .. versionadded:: 0.1
    """


@hookspec
def list_columns(crm: Any, entity: Any, actor: Any) -> list[dict[str, Any]] | None:
    """Return extra list columns ``{"name", "label", "render": callable(record) -> str}``.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def render_cell(crm: Any, entity: Any, field: Any, value: Any, record: dict[str, Any], request: Any) -> Any:
    """Return HTML (Markup) for one cell, or None to use the default rendering.

    firstresult: the first non-None answer wins.

    .. versionadded:: 0.1
    """


@hookspec
def record_panels(
    crm: Any, entity: Any, record: dict[str, Any], actor: Any, request: Any
) -> list[dict[str, Any]] | None:
    """Return panels for a record's 360° page: ``{"title", "html"}`` or ``{"title", "template", "context"}``.

    .. versionadded:: 0.1
    """


@hookspec
def record_actions(
    crm: Any, entity: Any, record: dict[str, Any], actor: Any, request: Any
) -> list[dict[str, Any]] | None:
    """Return buttons for a record page: ``{"name", "label", "href"|"action", "method"}``.

    .. versionadded:: 0.1
    """


@hookspec
def list_actions(crm: Any, entity: Any, actor: Any, request: Any) -> list[dict[str, Any]] | None:
    """Return bulk actions offered on a list page: ``{"name", "label", "handler"}``.

    .. versionadded:: 0.1
    """


@hookspec
def register_ui_strings(crm: Any) -> dict[str, tuple[str, str]] | None:
    """Return the admin words a plugin uses, ``{key: (english, japanese)}``.

    Templates and handlers look them up like the built-in ones (``ctx._("my_key", n=3)``;
    ``{placeholders}`` are filled with ``str.format``). A plugin's key never replaces a built-in
    one, so plugins should prefix their keys (``scoring_…``).

    .. versionadded:: 0.1
    """


@hookspec
def extra_template_vars(crm: Any, template: str, request: Any) -> dict[str, Any] | None:
    """Return extra variables for rendering ``template``.

    .. versionadded:: 0.1
    """


@hookspec
def extra_css_urls(crm: Any, template: str, request: Any) -> list[str] | None:
    """Return stylesheet URLs (local paths) added to admin pages.

    .. versionadded:: 0.1
    """


@hookspec
def extra_js_urls(crm: Any, template: str, request: Any) -> list[str] | None:
    """Return script URLs (local paths) added to admin pages.

    .. versionadded:: 0.1
    """


@hookspec
def register_routes(crm: Any) -> list[Any] | None:
    """Return Starlette ``Route``/``Mount`` objects added to the application.

    .. versionadded:: 0.1
    """


@hookspec
def register_middleware(crm: Any) -> list[Any] | None:
    """Return Starlette ``Middleware`` objects wrapped around the application.

    .. versionadded:: 0.1
    """


# -------------------------------------------------------------------------------------------------
# REST API
# -------------------------------------------------------------------------------------------------


@hookspec
def register_record_actions(crm: Any) -> list[Any] | None:
    """Return record actions served at ``POST /api/v1/{entity}/{id}/{action}`` (``lead/…/convert``).

    Each item is a :class:`crmkit.web.api.RecordAction` or a dict with its keys: ``entity``,
    ``name``, ``handler`` and optionally ``description`` and ``input_schema`` (JSON Schema of the
    request body, shown in the OpenAPI document). The API first reads the record as the caller
    (404 if they may not see it), then calls ``handler`` with keyword arguments, passing those it
    accepts of ``crm``, ``entity``, ``record``, ``payload`` (the JSON body, ``{}`` if empty) and
    ``actor``. The handler writes through ``crm.records`` as ``actor`` (so permissions apply) and
    returns the records it touched as ``{name: record | [records] | None}``, which is the response.
    Registering the same entity and name twice is an error. Buttons for the admin UI are the
    separate ``record_actions`` hook.

    .. versionadded:: 0.1
    """
