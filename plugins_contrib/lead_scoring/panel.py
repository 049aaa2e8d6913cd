"""The "Score" panel on a lead's page: why the lead has the score it has."""

from __future__ import annotations

import datetime as dt
from typing import Any

from crmkit.core.errors import CRMError
from plugins_contrib import rule_files
from plugins_contrib.lead_scoring import actions, engine
from plugins_contrib.lead_scoring.rules import ACTIVITY, KIND, LEAD

UI_STRINGS: dict[str, tuple[str, str]] = {
    "scoring_panel_title": ("Score", "スコア"),
    "scoring_score": ("Score", "スコア"),
    "scoring_grade": ("Grade", "ランク"),
    "scoring_updated": ("Computed {when}", "{when} に計算"),
    "scoring_by_group": ("Points by rule group", "ルールグループ別のポイント"),
    "scoring_group": ("Group", "グループ"),
    "scoring_points": ("points", "ポイント"),
    "scoring_cap": ("max {cap}", "上限 {cap}"),
    "scoring_no_points": ("No rule has scored for this lead yet.", "この見込み客にはまだポイントがありません。"),
    "scoring_day_of": ("day {day} of {days}", "{days}日中{day}日目"),
    "scoring_expected": ("expected by now: {n}", "現時点の目安: {n}"),
    "scoring_kpi_behind": ("Behind the goal", "目標に対して遅れています"),
    "scoring_kpi_on_track": ("On track", "順調"),
    "scoring_checkpoint": ("Day {day}", "{day}日目"),
    "scoring_reminder_task": ("reminder task", "リマインドタスク"),
    "scoring_ledger": ("All {n} scored items", "ポイント明細（{n}件）"),
    "scoring_ledger_caption": ("Every item that scored, newest first", "ポイントの明細（新しい順）"),
    "scoring_rule": ("Rule", "ルール"),
    "scoring_when": ("When", "日時"),
    "scoring_raw": ("{n} points before caps and decay", "上限・減衰の前は {n} ポイント"),
    "scoring_rules_error": (
        "The scoring rule file has problems; the previous rules stay in force until it is fixed:",
        "スコアリングのルールファイルに問題があります。修正されるまで以前のルールが有効です：",
    ),
    "scoring_note_once_per": ("counted once per period", "期間内で1回のみ加算"),
    "scoring_note_rule_cap": ("rule cap reached", "ルールの上限に到達"),
    "scoring_note_group_cap": ("group cap reached", "グループの上限に到達"),
    "scoring_note_max_score": ("maximum score reached", "スコアの上限に到達"),
    "scoring_note_decayed": ("decayed with age", "経過時間により減衰"),
    "scoring_source_event": ("event", "イベント"),
}


def _num(value: Any) -> str:
    return f"{round(float(value or 0), 2):g}"


def _local(value: Any, tz: dt.tzinfo) -> str:
    if not isinstance(value, dt.datetime):
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M")


def score_panel(crm: Any, record: dict[str, Any], actor: Any, request: Any) -> dict[str, Any]:
    """The panel dict (title, template, context) for ``record_panels``."""
    ctx = getattr(request.state, "crmkit_ctx", None)
    lang = getattr(ctx, "lang", None) or getattr(actor, "locale", "en")
    tz = getattr(ctx, "tz", dt.UTC)
    title = UI_STRINGS["scoring_panel_title"][1 if lang == "ja" else 0]
    access = crm.records.field_access(actor, LEAD).get(engine.SCORE, "read")
    if access in ("none", "write-only"):
        return {"title": title, "html": ""}
    status = rule_files.status(crm, KIND)
    rules = rules_of_status(crm)
    items = engine.ledger_rows(crm, record["id"])
    readable = _readable_activities(crm, actor, [r["source_id"] for r in items if r["source_entity"] == ACTIVITY])

    def rule_label(group: str, rule: str) -> str:
        g = rules.group(group) if rules else None
        r = g.rule(rule) if g else None
        if r is None:
            return f"{group}.{rule}"
        return f"{g.label.get(lang) or g.label['en']}: {r.label.get(lang) or r.label['en']}"

    shown = []
    for r in items:
        href, source = None, ""
        if r["source_entity"] == ACTIVITY and r["source_id"] in readable:
            href, source = f"/admin/activity/{r['source_id']}", readable[r["source_id"]]
        elif r["source_entity"] == ACTIVITY:
            source = f"#{r['source_id']}"
        note = r.get("note")
        shown.append({
            "rule": rule_label(r["group_name"], r["rule_name"]), "href": href, "source": source,
            "at": _local(r["at"], tz), "points": _num(r["points"]), "effective": _num(r["effective"]),
            "note": UI_STRINGS.get(f"scoring_note_{note}", (note, note))[1 if lang == "ja" else 0] if note else "",
        })
    sums: dict[str, float] = {}
    for r in items:
        sums[r["group_name"]] = sums.get(r["group_name"], 0.0) + float(r["effective"])
    groups = []
    for g in (rules.groups if rules else ()):
        if g.name in sums:
            groups.append({"label": g.label.get(lang) or g.label["en"], "points": _num(sums[g.name]),
                           "cap": _num(g.cap) if g.cap else None})
    kpis = []
    if rules is not None:
        checks = actions.reminders_of(crm, record["id"])
        for k in actions.kpi_progress(crm, rules, record):
            kpi = k["kpi"]
            kpis.append({
                "label": kpi.label.get(lang) or kpi.label["en"], "points": _num(k["points"]),
                "target": _num(kpi.target),
                "day": k["day"], "days": kpi.days, "expected": _num(k["expected"]), "over": k["over"],
                "applies": k["applies"], "behind": k["points"] < k["expected"],
                "checks": [{"checkpoint": c["checkpoint"], "points": _num(c["points"]), "expected": _num(c["expected"]),
                            "activity_id": c["activity_id"]} for c in checks if c["kpi"] == kpi.name],
            })
    context = {
        "score": _num(record.get(engine.SCORE)),
        "grade": record.get(engine.GRADE),
        "updated": _local(record.get(engine.UPDATED), tz),
        "groups": groups,
        "kpis": kpis,
        "items": shown,
        "problems": [str(p) for p in status["problems"]] if actor.is_admin else [],
    }
    return {"title": title, "template": "lead_scoring/panel.html", "context": context}


def rules_of_status(crm: Any) -> Any:
    """The rules in force (the panel explains with the labels of the current rules)."""
    return rule_files.active(crm, KIND)


def _readable_activities(crm: Any, actor: Any, ids: list[int]) -> dict[int, str]:
    """Subjects of the activities among ``ids`` that the actor may read (others show as #id)."""
    ids = sorted({i for i in ids if i is not None})[:200]
    if not ids or ACTIVITY not in crm.catalog:
        return {}
    title = crm.catalog[ACTIVITY].title_field
    try:
        page = crm.records.list(ACTIVITY, actor=actor, filter={"id": {"in": ids}}, columns=[title],
                                limit=len(ids), with_count=False)
    except CRMError:
        return {}
    return {r["id"]: str(r.get(title) or f"#{r['id']}") for r in page.items}
