"""The web forms plugin's words in English and Japanese (``register_ui_strings``)."""

from __future__ import annotations

STRINGS: dict[str, tuple[str, str]] = {
    "web_forms_menu": ("Web forms", "Webフォーム"),
    "web_forms_form": ("Form", "フォーム"),
    "web_forms_created": ("Created", "登録"),
    "web_forms_invalid": ("Invalid", "入力エラー"),
    "web_forms_spam": ("Spam", "スパム"),
    "web_forms_limited": ("Rate limited", "回数制限"),
    "web_forms_last_30_days": ("Submissions of the last 30 days.", "過去30日間の送信数です。"),
    "web_forms_none": ("No forms: add YAML files to the project's forms/ folder.",
                       "フォームがありません。プロジェクトの forms/ フォルダーにYAMLファイルを追加してください。"),
    "web_forms_submit": ("Send", "送信する"),
    "web_forms_required": ("This field is required.", "入力してください。"),
    "web_forms_consent_required": ("Please agree to continue.", "送信するには同意が必要です。"),
    "web_forms_fix_errors": ("Please correct {n} item(s) below.",
                             "入力内容に {n} 件の誤りがあります。ご確認ください。"),
    "web_forms_expired": ("This page has expired. Please check your entries and send the form again.",
                          "ページの有効期限が切れました。入力内容をご確認のうえ、もう一度送信してください。"),
    "web_forms_rate_limited": ("Too many submissions from your network. Please try again later.",
                               "送信回数が多すぎます。しばらくしてからもう一度お試しください。"),
    "web_forms_leave_empty": ("Leave this field empty", "この欄は空欄のままにしてください"),
    "web_forms_thanks_title": ("Thank you", "送信ありがとうございました"),
    "web_forms_thanks_text": ("We have received your message and will be in touch shortly.",
                              "お問い合わせを受け付けました。担当者より追ってご連絡いたします。"),
    "web_forms_not_found_title": ("Form not found", "フォームが見つかりません"),
    "web_forms_not_found_text": ("This form does not exist or is no longer available.",
                                 "このフォームは存在しないか、公開を終了しました。"),
}
