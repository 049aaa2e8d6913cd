"""Japanese-aware folding for search and company-name matching (crmkit.core.text)."""

from __future__ import annotations

import pytest

from crmkit.core.text import (
    SEPARATOR,
    normalize_company,
    normalize_query,
    normalize_search,
    query_variants,
    search_text,
)


@pytest.mark.parametrize("value", [None, "", "   ", "\u3000\t\n"])
def test_empty_values_fold_to_empty_string(value):
    assert normalize_search(value) == ""
    assert normalize_company(value) == ""
    assert query_variants(value) == []


def test_katakana_widths_and_hiragana_fold_together():
    assert {normalize_search(s) for s in ["ｶﾀｶﾅ", "カタカナ", "かたかな"]} == {"かたかな"}
    # Half-width voiced marks compose (ｶﾞ is two code points) before kana folding.
    assert normalize_search("ｶﾞｲﾄﾞ") == normalize_search("ガイド") == "がいど"
    assert normalize_search("ヴ") == "ゔ"


def test_half_width_katakana_query_finds_full_width_text():
    stored = search_text(["カタカナ商事"])
    assert normalize_query("ｶﾀｶﾅ") in stored
    assert normalize_query("かたかな") in stored


def test_full_width_latin_and_digits_fold_to_ascii_lower_case():
    assert normalize_search("ＡＢＣ１２３") == normalize_search("abc123") == "abc123"
    assert normalize_search("Straße") == normalize_search("STRASSE")  # casefold, not just lower


def test_whitespace_collapses_including_ideographic_space():
    assert normalize_search("  山田\u3000 太郎\n様 ") == "山田 太郎 様"


def test_dashes_fold_to_hyphen_in_numbers_and_to_long_vowel_after_kana():
    variants = ["03-1234-5678", "03ー1234ー5678", "03−1234−5678", "03‐1234—5678", "０３－１２３４－５６７８"]
    assert {normalize_search(v) for v in variants} == {"03-1234-5678"}
    assert {normalize_search(s) for s in ["コーヒー", "コ−ヒ−", "ｺｰﾋｰ"]} == {"こーひー"}


def test_mixed_japanese_and_english():
    assert normalize_search("ＡＣＭＥ　ジャパン株式会社") == "acme じゃぱん株式会社"
    assert {normalize_company(s) for s in ["ＡＣＭＥ　ジャパン株式会社", "acme ｼﾞｬﾊﾟﾝ(株)"]} == {"acmeじゃぱん"}


@pytest.mark.parametrize("name", ["株式会社テスト", "(株)テスト", "（株）テスト", "㈱テスト", "ﾃｽﾄ株式会社",
                                  "テスト ㈱", "テスト（株）", "テスト", "てすと", "㍿テスト"])
def test_japanese_legal_forms_give_one_company_key(name):
    assert normalize_company(name) == "てすと"


@pytest.mark.parametrize("name", ["有限会社テスト", "テスト(有)", "㈲テスト", "合同会社テスト",
                                  "合資会社テスト", "合名会社テスト", "一般社団法人テスト",
                                  "一般財団法人テスト"])
def test_other_japanese_legal_forms(name):
    assert normalize_company(name) == "てすと"


@pytest.mark.parametrize("name", ["ACME Inc.", "Acme, Inc", "acme", "ACME Corporation", "Acme Corp.",
                                  "Acme Ltd", "Acme Co.,Ltd.", "Acme Co., Ltd.", "ACME LLC", "Acme K.K.",
                                  "ACME KK",
                                  "Acme GmbH", "ＡＣＭＥ　Ｉｎｃ．", "株式会社ACME"])
def test_latin_legal_forms_give_one_company_key(name):
    assert normalize_company(name) == "acme"


def test_latin_suffixes_are_only_removed_as_whole_words():
    assert normalize_company("Incredible Machines Inc.") == "incrediblemachines"
    assert normalize_company("Cohen Kkirk") == "cohenkkirk"
    assert normalize_company("テストInc.") == "てすと"


def test_a_bare_legal_form_keeps_its_letters():
    assert normalize_company("株式会社") == "株式会社"
    assert normalize_company("Inc.") == "inc"


def test_search_text_contains_search_and_company_forms():
    text = search_text(["株式会社テスト", None, "", "Acme Inc.", 42])
    parts = text.split(SEPARATOR)
    assert parts == ["株式会社てすと", "てすと", "acme inc.", "acme", "42"]


def test_search_text_takes_dict_values_and_list_items_and_skips_duplicates():
    text = search_text([{"city": "東京都", "zip": "100-0001"}, ["vip", "ＶＩＰ"], "東京都"])
    assert text.split(SEPARATOR) == ["東京都", "100-0001", "1000001", "vip"]


def test_search_finds_company_across_variants():
    stored = search_text(["ﾃｽﾄ株式会社"])
    for query in ["テスト", "(株)テスト", "株式会社テスト", "テスト㈱", "てすと"]:
        assert any(v in stored for v in query_variants(query)), query


def test_phone_without_dashes_finds_phone_with_dashes():
    stored = search_text(["03-1234-5678"])
    assert any(v in stored for v in query_variants("0312345678"))
    assert normalize_query("03ー1234") in stored


def test_query_cannot_match_across_two_values():
    stored = search_text(["abc", "def"])
    assert normalize_query("c d") not in stored
    assert normalize_query("c\u001fd") not in stored  # the separator is whitespace to a query


def test_query_variants_are_distinct_and_non_empty():
    assert query_variants("(株)テスト") == ["(株)てすと", "てすと"]
    assert query_variants("acme") == ["acme"]
    assert query_variants("!!!") == ["!!!"]


def test_long_values_get_no_company_form():
    long = "株式会社テスト " * 40
    assert SEPARATOR not in search_text([long])


# The company key's definition, written with the module's own expressions and none of the cheap
# tests that skip them: normalize_company must give exactly this for any text.
def _company_key_by_definition(name):
    import crmkit.core.text as t

    folded = normalize_search(name)
    if not folded:
        return ""
    stripped = t._LATIN_RE.sub(" ", folded if folded.isascii() else t._JA_RE.sub(" ", folded))
    return t._NOT_WORD_RE.sub("", stripped) or t._NOT_WORD_RE.sub("", folded)


_COMPANY_PIECES = [
    "Acme", "acme", " ", "  ", "-", ".", "@", "_", ",", "&", "'", "(", ")", "株式会社", "(株)", "（有）", "㈱", "法人",
    "一般社団法人", "会社", "Inc.", "inc", "Co., Ltd.", "co.ltd", "Corp", "Corporation", "LLC", "K.K.", "k. k", "KK",
    "GmbH", "Limited", "Cohen", "Incredible", "テスト", "ﾃｽﾄ", "サンプル", "ー", "−", "１２３", "12", "user0",
    "example", "co", "jp", "ｋｋ", "Ｉｎｃ．", "①", "²", "\u3000", "\t", "é", "ß",
]


def test_company_key_is_its_definition_for_many_names():
    import random

    rng = random.Random(8)
    names = ["".join(rng.choice(_COMPANY_PIECES) for _ in range(rng.randint(1, 6))) for _ in range(4000)]
    names += ["user0@example15.co.jp", "09-1542-5991", "Acme 84890 Inc.", "株式会社サンプル56281", "foo_bar", "a_b c",
              "(株)", "Inc.", "---", "@.", "Initech 165314 LLC", "テスト 株式会社", "ＡＣＭＥ　Ｋ．Ｋ．"]
    for name in names:
        assert normalize_company(name) == _company_key_by_definition(name), name


def test_search_text_of_mixed_values_is_each_values_forms_in_order_once():
    values = ["Acme Inc.", None, "", {"city": "渋谷区", "street": "Acme Inc."}, ["a", "b", "a"], 42, True, "acme"]
    expected = []
    for raw in ["Acme Inc.", "渋谷区", "Acme Inc.", "a", "b", "a", "42", "acme"]:
        for form in (normalize_search(raw), normalize_company(raw)):
            if form and form not in expected:
                expected.append(form)
    assert search_text(values) == SEPARATOR.join(expected)
    assert search_text(["only"]) == "only" and search_text([]) == "" and search_text([None, ""]) == ""
