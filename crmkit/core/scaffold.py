"""``crmkit init``: write a new company project (crmkit.yaml and example overlays)."""

from __future__ import annotations

from pathlib import Path

CONFIG_TEMPLATE = """\
# crmkit project settings. CRMKIT_DATABASE_URL and CRMKIT_SECRET_KEY override these.
name: My company CRM
# SQLite file next to this one; for production use postgresql://user@host/dbname
database_url: sqlite:///crmkit.db
secret_key: {secret_key}
locale: ja
time_zone: Asia/Tokyo
# Entity files of this company: `extends:` adds to a built-in entity, `entity:` defines a new one.
schema_paths: [schemas]
# Optional plugins shipped with crmkit or installed from packages.
plugins: []
smtp:
  host: 127.0.0.1
  port: 25
  sender: crm@example.com
"""

LEAD_OVERLAY = """\
# Adds fields to the built-in lead entity. Run `crmkit check`, then `crmkit migrate`.
extends: lead
fields:
  budget:         {type: money, min: 0, label: {en: Budget, ja: 予算}}
  decision_maker: {type: boolean, label: {en: Decision maker, ja: 決裁者}}
  trade_show:     {type: string, max_length: 100, label: {en: Trade show, ja: 展示会名}}
  # Add an option to a built-in enum field: leave out `type:`.
  source:
    options:
      - {value: partner_portal, label: {en: Partner portal, ja: パートナーポータル}}
# Where the new fields go on the form (without this, they appear in a last "More details" section).
form:
  add_sections:
    - label: {en: Qualification, ja: 有望度}
      after: Lead details
      fields: [budget, decision_maker, trade_show]
# Where these fields go when a lead is converted; `crmkit check` refuses a lead field in neither list.
conversion:
  map:
    budget: deal.amount
  ignore: [decision_maker, trade_show]
"""

CONTRACT_ENTITY = """\
# A new entity: contracts signed with accounts.
entity: contract
label: {en: Contract, ja: 契約}
plural_label: {en: Contracts, ja: 契約}
title_field: title
audit: true
fields:
  title:      {type: string, required: true, max_length: 200, label: {en: Title, ja: 件名}}
  account:    {type: reference, to: account, required: true, inverse: contracts, label: {en: Account, ja: 取引先}}
  deal:       {type: reference, to: deal, label: {en: Deal, ja: 商談}}
  amount:     {type: money, min: 0, label: {en: Amount, ja: 契約金額}}
  start_date: {type: date, required: true, label: {en: Start date, ja: 開始日}}
  end_date:   {type: date, label: {en: End date, ja: 終了日}}
  status:
    type: enum
    default: draft
    label: {en: Status, ja: ステータス}
    options:
      - {value: draft, label: {en: Draft, ja: 下書き}, color: "#9ca3af"}
      - {value: active, label: {en: Active, ja: 有効}, color: "#16a34a"}
      - {value: expired, label: {en: Expired, ja: 期限切れ}, color: "#dc2626"}
list:
  columns: [title, account, status, start_date, end_date, amount]
  sort: [-start_date]
  filters: [status, account]
  search: [title, account.name]
"""


def write_project(directory: Path, *, secret_key: str) -> list[Path]:
    """Create the project files; refuse to overwrite an existing crmkit.yaml."""
    directory = Path(directory)
    config = directory / "crmkit.yaml"
    if config.exists():
        raise FileExistsError(f"{config} already exists; not overwriting it")
    (directory / "schemas").mkdir(parents=True, exist_ok=True)
    files = {
        config: CONFIG_TEMPLATE.format(secret_key=secret_key),
        directory / "schemas" / "lead_extra.yaml": LEAD_OVERLAY,
        directory / "schemas" / "contract.yaml": CONTRACT_ENTITY,
        directory / ".gitignore": "crmkit.db\ncrmkit.db-*\nuploads/\n",
    }
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return list(files)
