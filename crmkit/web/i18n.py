"""UI strings of the admin in English and Japanese, and the choice of language per request.

Entity and field labels come from the YAML (``Entity.text(lang)``, ``Field.text(lang)``); this
module only holds the admin's own words (buttons, headings, messages). The language is the
user's setting, then (before login) the language chosen on the login page, then the browser's
``Accept-Language``, then the project's ``locale``.
"""

from __future__ import annotations

from typing import Any

LANGUAGES = ("en", "ja")

STRINGS: dict[str, tuple[str, str]] = {
    # chrome
    "app_name": ("crmkit", "crmkit"),
    "skip_to_content": ("Skip to content", "本文へ移動"),
    "menu": ("Menu", "メニュー"),
    "dashboard": ("Dashboard", "ダッシュボード"),
    "home": ("Home", "ホーム"),
    "records": ("Records", "レコード"),
    "master_data": ("Settings & master data", "設定・マスタ"),
    "more": ("More", "その他"),
    "language": ("Language", "言語"),
    "switch_language": ("日本語", "English"),
    "signed_in_as": ("Signed in as {name}", "{name} でログイン中"),
    "sign_out": ("Sign out", "ログアウト"),
    "search": ("Search", "検索"),
    "search_placeholder": ("Search {entity}…", "{entity}を検索…"),
    # login
    "sign_in": ("Sign in", "ログイン"),
    "sign_in_title": ("Sign in to crmkit", "crmkit にログイン"),
    "username": ("Username", "ユーザー名"),
    "password": ("Password", "パスワード"),
    "login_failed": ("Wrong username or password.", "ユーザー名またはパスワードが正しくありません。"),
    "login_throttled": (
        "Too many failed attempts. Try again in {minutes} minute(s).",
        "ログインの失敗が続いたため、一時的にロックしました。{minutes}分後に再度お試しください。",
    ),
    "signed_out": ("You have signed out.", "ログアウトしました。"),
    "session_expired": (
        "Your session has expired. Please sign in again.",
        "セッションの有効期限が切れました。再度ログインしてください。",
    ),
    # generic actions
    "new": ("New", "新規作成"),
    "new_entity": ("New {entity}", "{entity}を作成"),
    "edit": ("Edit", "編集"),
    "edit_entity": ("Edit {entity}", "{entity}を編集"),
    "save": ("Save", "保存"),
    "cancel": ("Cancel", "キャンセル"),
    "delete": ("Delete", "削除"),
    "back": ("Back", "戻る"),
    "apply": ("Apply", "適用"),
    "clear": ("Clear", "クリア"),
    "close": ("Close", "閉じる"),
    "yes": ("Yes", "はい"),
    "no": ("No", "いいえ"),
    "any": ("Any", "すべて"),
    "none_value": ("—", "—"),
    "me": ("Me", "自分"),
    "add_row": ("Add row", "行を追加"),
    "remove": ("Remove", "削除"),
    "choose": ("Choose…", "選択してください"),
    "type_to_search": ("Type to search…", "入力して検索…"),
    "no_matches": ("No matches", "該当なし"),
    "current_file": ("Current file", "現在のファイル"),
    "remove_file": ("Remove the file", "ファイルを削除"),
    "from": ("From", "開始"),
    "to": ("To", "終了"),
    # list page
    "results": ("{count} records", "{count} 件"),
    "result_one": ("1 record", "1 件"),
    "no_records": ("Nothing here yet.", "まだレコードがありません。"),
    "no_results": ("No records match.", "条件に一致するレコードはありません。"),
    "filters": ("Filters", "絞り込み"),
    "columns": ("Columns", "表示列"),
    "sort_by": ("Sort by {field}", "{field}で並べ替え"),
    "next_page": ("Next page", "次のページ"),
    "first_page": ("First page", "最初のページ"),
    "select_all": ("Select all on this page", "このページをすべて選択"),
    "select_row": ("Select {title}", "{title}を選択"),
    "bulk_actions": ("With selected", "選択したレコードを"),
    "bulk_assign_owner": ("Assign owner", "所有者を変更"),
    "bulk_set_field": ("Set a field", "項目を一括更新"),
    "bulk_delete": ("Delete", "削除"),
    "bulk_export": ("Export CSV", "CSV出力"),
    "export_all": ("Export all (CSV)", "すべてCSV出力"),
    "run": ("Run", "実行"),
    "value": ("Value", "値"),
    "field": ("Field", "項目"),
    "new_owner": ("New owner", "新しい所有者"),
    "nothing_selected": ("Select at least one record first.", "レコードを1件以上選択してください。"),
    "bulk_done": ("{n} record(s) updated.", "{n} 件を更新しました。"),
    "bulk_deleted": ("{n} record(s) deleted.", "{n} 件を削除しました。"),
    "bulk_failed": ("{n} record(s) could not be changed:", "{n} 件は変更できませんでした:"),
    "confirm_delete_title": ("Delete {n} record(s)?", "{n} 件のレコードを削除しますか？"),
    "confirm_delete_text": (
        "This cannot be undone. These records will be deleted:",
        "この操作は元に戻せません。次のレコードを削除します:",
    ),
    "confirm_delete_one": (
        "Delete “{title}”? This cannot be undone.",
        "「{title}」を削除しますか？この操作は元に戻せません。",
    ),
    "deleted": ("“{title}” was deleted.", "「{title}」を削除しました。"),
    "saved_views": ("Saved views", "保存済みビュー"),
    "all_records": ("All", "すべて"),
    "save_view": ("Save this view", "このビューを保存"),
    "view_name": ("View name", "ビュー名"),
    "view_saved": ("View “{name}” saved.", "ビュー「{name}」を保存しました。"),
    "delete_view": ("Delete view", "ビューを削除"),
    "view_deleted": ("View deleted.", "ビューを削除しました。"),
    # detail page
    "details": ("Details", "詳細"),
    "related": ("Related", "関連"),
    "timeline": ("Activity timeline", "活動タイムライン"),
    "no_activities": ("No activities yet.", "活動はまだありません。"),
    "view_all": ("View all", "すべて表示"),
    "add": ("Add", "追加"),
    "history": ("History", "変更履歴"),
    "created": ("Created", "作成"),
    "updated": ("Updated", "更新"),
    "record_info": ("Record information", "レコード情報"),
    "owner": ("Owner", "所有者"),
    "via": ("via {title}", "{title} 経由"),
    # forms
    "required": ("required", "必須"),
    "form_has_errors": ("Please correct the marked fields.", "入力内容を確認してください。"),
    "saved": ("Saved.", "保存しました。"),
    "created_msg": ("“{title}” was created.", "「{title}」を作成しました。"),
    "conflict_title": ("Someone else changed this record", "他のユーザーがこのレコードを変更しました"),
    "conflict_text": (
        "Compare your changes with the saved version. Saving again will overwrite the saved version "
        "with yours.",
        "あなたの変更内容と保存済みの内容を比べてください。もう一度保存すると、あなたの内容で上書きします。",
    ),
    "your_version": ("Your version", "あなたの変更"),
    "saved_version": ("Saved version", "保存済みの内容"),
    "overwrite": ("Save my version", "自分の内容で保存"),
    "discard": ("Discard my changes", "変更を破棄"),
    "upload_too_large": ("The file is too large (max {mb} MB).", "ファイルが大きすぎます（最大 {mb} MB）。"),
    "upload_not_image": (
        "Upload an image (PNG, JPEG, GIF or WebP).",
        "画像ファイル（PNG・JPEG・GIF・WebP）を選択してください。",
    ),
    # errors
    "error": ("Error", "エラー"),
    "forbidden_title": ("Access denied", "アクセスできません"),
    "forbidden_text": ("You do not have permission to do this.", "この操作を行う権限がありません。"),
    "not_found_title": ("Not found", "見つかりません"),
    "not_found_text": (
        "This page or record does not exist, or you cannot see it.",
        "ページまたはレコードが存在しないか、閲覧権限がありません。",
    ),
    "csrf_failed": (
        "The form expired or was sent from another site. Reload the page and try again.",
        "フォームの有効期限が切れたか、別のサイトから送信されました。ページを再読み込みしてやり直してください。",
    ),
    "bad_request": ("The request could not be understood.", "リクエストを処理できませんでした。"),
    # kanban / dashboard
    "kanban": ("Pipeline board", "パイプラインボード"),
    "list_view": ("List", "リスト"),
    "board_view": ("Board", "ボード"),
    "drag_hint": (
        "Drag a card to another stage, or focus it and press ← / →.",
        "カードを別のフェーズへドラッグするか、選択して ← / → キーで移動します。",
    ),
    "moved_to": ("Moved to {stage}.", "{stage} に移動しました。"),
    "move_failed": ("Could not move the card: {message}", "移動できませんでした: {message}"),
    "cards_more": ("{n} more…", "ほか {n} 件…"),
    "total": ("Total", "合計"),
    "weighted": ("Weighted", "加重"),
    "my_open_tasks": ("My open tasks", "自分の未完了タスク"),
    "todays_visits": ("Today's visits", "今日の訪問予定"),
    "pipeline_summary": ("Pipeline summary", "パイプライン概況"),
    "no_open_tasks": ("No open tasks. Nice work!", "未完了のタスクはありません。"),
    "no_visits_today": ("No visits scheduled for today.", "今日の訪問予定はありません。"),
    "no_open_deals": ("No open deals.", "進行中の商談はありません。"),
    "overdue": ("overdue", "期限切れ"),
    "due": ("Due", "期限"),
    "stage": ("Stage", "フェーズ"),
    "deals_count": ("Deals", "件数"),
    "amount": ("Amount", "金額"),
    "welcome": ("Welcome, {name}", "{name} さん、こんにちは"),
}


def t(key: str, lang: str = "en", *, extra: dict[str, tuple[str, str]] | None = None, **kwargs: Any) -> str:
    """The UI string ``key`` in ``lang``, formatted with ``kwargs``; an unknown key is returned as is.

    ``extra`` holds the strings plugins registered (``register_ui_strings``); built-ins win.
    """
    pair = STRINGS.get(key) or (extra.get(key) if extra else None)
    if pair is None:
        text = key
    else:
        text = pair[1] if lang == "ja" else pair[0]
    return text.format(**kwargs) if kwargs else text


class Translator:
    """``_("save")`` in templates: :func:`t` bound to one language."""

    def __init__(self, lang: str, extra: dict[str, tuple[str, str]] | None = None):
        self.lang = lang if lang in LANGUAGES else "en"
        self.extra = extra

    def __call__(self, key: str, **kwargs: Any) -> str:
        return t(key, self.lang, extra=self.extra, **kwargs)


def plugin_strings(crm: Any) -> dict[str, tuple[str, str]]:
    """The ``register_ui_strings`` of every plugin, merged once per CRM."""
    cached = getattr(crm, "_ui_strings", None)
    if cached is None:
        from crmkit.plugins import call_each

        cached = {}
        for _plugin, strings in call_each(crm.pm, "register_ui_strings", crm=crm):
            for key, pair in strings.items():
                cached.setdefault(key, tuple(pair))
        crm._ui_strings = cached
    return cached


def parse_accept_language(header: str | None) -> str | None:
    """The first supported language in an ``Accept-Language`` header, by quality; None if none."""
    if not header:
        return None
    choices: list[tuple[float, int, str]] = []
    for i, part in enumerate(header.split(",")):
        piece = part.strip()
        if not piece:
            continue
        tag, _, params = piece.partition(";")
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and quality > 0:
            choices.append((-quality, i, primary))
    return sorted(choices)[0][2] if choices else None


def choose_language(request: Any, actor: Any = None, default: str = "en") -> str:
    """The UI language for ``request``: user setting, session choice, Accept-Language, project default."""
    if (
        actor is not None
        and getattr(actor, "locale", None) in LANGUAGES
        and not getattr(actor, "system", False)
    ):
        return actor.locale
    session = request.scope.get("session") or {}
    if session.get("lang") in LANGUAGES:
        return session["lang"]
    return parse_accept_language(request.headers.get("accept-language")) or (
        default if default in LANGUAGES else "en"
    )
