"""Japanese-aware text folding for search and company-name matching.

Everything here is a pure function of its input and runs on every save (and on every row of a
million-row import), so the per-character work is done with precomputed ``str.translate`` tables
and compiled regular expressions; ASCII-only input skips Unicode normalisation altogether.

- :func:`normalize_search`: NFKC (half-width katakana and full-width Latin/digits), case folding,
  katakana -> hiragana, dash and long-vowel variants -> ``-``, whitespace collapsed.
- :func:`normalize_company`: the above minus legal-form markers (株式会社, (株), Inc., Ltd. ...),
  punctuation and spaces, so ``株式会社テスト`` == ``ﾃｽﾄ㈱`` and ``ACME Inc.`` == ``acme``.
- :func:`search_text`: the stored search text of a record; :func:`query_variants`: the forms of
  a user's query to look for in it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from functools import lru_cache

#: Between the values of a search text. The unit separator counts as whitespace for str.split,
#: so a normalised query can never contain it and cannot match across two values.
SEPARATOR = " \u001f "

# Katakana ァ..ヶ (U+30A1..U+30F6) and the iteration marks ヽヾ sit exactly 0x60 above hiragana.
_KANA = {cp: cp - 0x60 for cp in range(0x30A1, 0x30F7)}
_KANA.update({0x30FD: 0x309D, 0x30FE: 0x309E})

# Dash-like characters (hyphens, minus, dashes, the long-vowel mark ー, box-drawing line) are typed
# interchangeably in phone numbers, postcodes and katakana words: they all fold to '-', except
# right after kana, where they are the long-vowel mark ー (so コーヒー and コ−ヒ− both give こーひー
# and 03ー1234 gives 03-1234).
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2043\u2212\u2500\u2501\u30fc\ufe58\ufe63\uff0d\uff70"
_WAVES = "\u301c\u3030\uff5e"  # 〜 〰 ～ -> ~

_SEARCH_TABLE: dict[int, int | str] = dict(_KANA)
_SEARCH_TABLE.update({ord(c): "-" for c in _DASHES})
_SEARCH_TABLE.update({ord(c): "~" for c in _WAVES})

# Legal-form markers, matched after normalize_search (so NFKC has already turned ㈱ and （株） into
# (株), and Latin text is lower case). Japanese markers are removed wherever they appear.
_JA_FORMS = (
    "一般社団法人", "一般財団法人", "公益社団法人", "公益財団法人", "特定非営利活動法人",
    "株式会社", "有限会社", "合同会社", "合資会社", "合名会社",
)
_JA_ABBREV = "株有同資名"  # (株) (有) (同) (資) (名)
_JA_RE = re.compile("|".join(_JA_FORMS) + r"|\(\s*[" + _JA_ABBREV + r"]\s*\)")
# Latin suffixes only as whole ASCII words, so "Incredible" or "Cohen" keep their letters; a
# kana/kanji neighbour counts as a boundary ("テストInc." loses the "Inc.").
_LATIN_RE = re.compile(
    r"(?<![a-z0-9])(?:"
    r"co\.?\s*,?\s*ltd\.?|inc\.?|co\.|ltd\.?|limited|corporation|corp\.?|llc\.?|k\.\s?k\.?|kk|gmbh"
    r")(?![a-z0-9])"
)
# Every match of _LATIN_RE contains one of these (a cheap test that skips the look-behinds).
_LATIN_HINT_RE = re.compile(r"co|inc|ltd|limited|llc|k\.|kk|gmbh")
_NOT_WORD_RE = re.compile(r"[\W_]+")  # punctuation, symbols, spaces (Unicode-aware)
_LONG_VOWEL_RE = re.compile(r"(?<=[\u3041-\u309f])-+")
#: Values longer than this (notes, descriptions) get no company form in the search text: it would
#: double their size for no benefit.
COMPANY_FORM_MAX = 200


def normalize_search(text: str | None) -> str:
    """Fold ``text`` for substring search: width, case, kana, dashes and whitespace.

    ``ｶﾀｶﾅ``, ``カタカナ`` and ``かたかな`` give the same string, as do ``ＡＢＣ１２３`` and
    ``abc123``, and ``03ー1234−5678`` and ``03-1234-5678``. None and "" give "".
    """
    if not text:
        return ""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text).translate(_SEARCH_TABLE)
        if "-" in text:
            text = _LONG_VOWEL_RE.sub(lambda m: "ー" * len(m.group()), text)
    # NFKC can produce new upper-case letters (Ｋ -> K), so fold case after it.
    return " ".join(text.casefold().split())


def normalize_company(name: str | None) -> str:
    """A matching key for company names: legal forms, punctuation and spaces removed.

    ``株式会社テスト``, ``(株)テスト``, ``ﾃｽﾄ株式会社`` and ``テスト ㈱`` all give ``てすと``;
    ``ACME Inc.``, ``Acme, Inc`` and ``acme`` all give ``acme``. A name that is nothing but a
    legal form keeps its folded letters rather than becoming "".
    """
    if not name:
        return ""
    return _company_key(" ".join(name.casefold().split()) if name.isascii() else normalize_search(name))


def _company_key(folded: str) -> str:
    if not folded:
        return ""
    stripped = folded
    # Each regex runs only when the text holds what every one of its matches contains: most
    # names, e-mail addresses and phone numbers have no legal form at all.
    if not folded.isascii() and ("会社" in folded or "法人" in folded or "(" in folded):
        stripped = _JA_RE.sub(" ", folded)
    if _LATIN_HINT_RE.search(stripped) is not None:
        stripped = _LATIN_RE.sub(" ", stripped)
    key = _without_punctuation(stripped)
    return key or _without_punctuation(folded)


def _without_punctuation(text: str) -> str:
    """``_NOT_WORD_RE.sub("", text)``; str.isalnum() is exactly "no \\W and no _", so it decides the common case."""
    if text.isalnum():
        return text
    # the usual separators (all \W) removed by str.replace first; what is left is often a word
    text = text.replace(" ", "").replace("-", "").replace(".", "").replace("@", "")
    return text if text.isalnum() else _NOT_WORD_RE.sub("", text)


def _flatten(values: Iterable[object]) -> Iterable[str]:
    for value in values:
        if type(value) is str:  # the common case first
            if value:
                yield value
            continue
        if value is None or value == "" or isinstance(value, bool):
            continue  # booleans would only add "true"/"false" noise to every record
        if isinstance(value, Mapping):  # address JSON and the like: its values
            yield from _flatten(value.values())
        elif isinstance(value, list | tuple | set | frozenset):  # multi_enum
            yield from _flatten(value)
        else:
            yield str(value)


def search_text(values: Iterable[object]) -> str:
    """The search text of a record from the values of its search paths.

    Each non-empty value contributes its :func:`normalize_search` form and, when different, its
    :func:`normalize_company` form (so ``テスト`` and ``(株)テスト`` both find ``株式会社テスト``,
    and ``0312345678`` finds ``03-1234-5678``); values over COMPANY_FORM_MAX characters only the former.
    Dicts contribute their values, lists their items; duplicates are kept once.
    """
    parts: list[str] = []
    forms_of = _forms
    for value in values:
        if type(value) is str:  # the common cases, without the generator of _flatten
            if not value:
                continue
            # Short values (names, enum labels, prefectures, titles) repeat from record to record,
            # so their forms are cached; long ones (notes) are folded each time.
            parts += forms_of(value) if len(value) <= COMPANY_FORM_MAX else _forms.__wrapped__(value)
            continue
        if value is None:
            continue
        for raw in _flatten((value,)):
            parts += _forms(raw) if len(raw) <= COMPANY_FORM_MAX else _forms.__wrapped__(raw)
    # dict.fromkeys keeps the first of equal forms, in order
    return SEPARATOR.join(dict.fromkeys(parts)) if len(parts) > 1 else (parts[0] if parts else "")


@lru_cache(maxsize=1 << 15)
def _forms(raw: str) -> tuple[str, ...]:
    """The distinct non-empty forms one value adds to a search text (see :func:`search_text`)."""
    folded = " ".join(raw.casefold().split()) if raw.isascii() else normalize_search(raw)  # (its ASCII case)
    if not folded:
        return ()
    company = _company_key(folded) if len(folded) <= COMPANY_FORM_MAX else ""
    return (folded, company) if company and company != folded else (folded,)


def normalize_query(q: str | None) -> str:
    """What the user typed, folded like stored text (:func:`normalize_search`)."""
    return normalize_search(q)


def query_variants(q: str | None) -> list[str]:
    """The distinct non-empty forms to look for: ``[normalize_search(q), normalize_company(q)]``.

    A record matches when its search text contains any of them; the company form lets
    ``(株)テスト`` find ``テスト株式会社`` (whose search text holds ``てすと``).
    """
    out: list[str] = []
    for form in (normalize_search(q), normalize_company(q)):
        if form and form not in out:
            out.append(form)
    return out
