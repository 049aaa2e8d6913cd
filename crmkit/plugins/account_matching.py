"""Find the existing accounts a lead belongs to: by company name and by email/web domain.

- **Name**: :func:`crmkit.core.text.normalize_company` folds NFKC width, kana, case and the legal
  forms, so ``株式会社テスト``, ``(株)テスト``, ``ﾃｽﾄ株式会社`` and ``テスト㈱`` are one company, as
  are ``ACME Inc.`` and ``Acme Co., Ltd.``. Candidates come from the accounts' indexed search
  text (the same trigram index the list search uses), then must match the folded key exactly.
- **Domain**: the lead's email domain (unless it is a free-mail provider such as gmail.com or
  yahoo.co.jp, or a reserved example domain) or website host, compared with accounts' websites and
  emails and with the email domains of their contacts. A domain found at more than a few accounts
  is a provider's, not a company's, and is not used.

Only accounts the actor may read are considered: a lead is never attached to a company the
converting user cannot see.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from crmkit.core.actors import Actor
from crmkit.core.text import normalize_company

if TYPE_CHECKING:
    from crmkit.app import CRM

#: Mail providers whose domain says nothing about the company (crmkit.yaml may add more).
FREE_MAIL_DOMAINS = frozenset(
    """
    gmail.com googlemail.com yahoo.com yahoo.co.jp ymail.com hotmail.com hotmail.co.jp outlook.com
    outlook.jp live.com live.jp msn.com icloud.com me.com mac.com aol.com protonmail.com proton.me
    gmx.com gmx.net mail.com yandex.com zoho.com fastmail.com docomo.ne.jp ezweb.ne.jp au.com
    softbank.ne.jp i.softbank.jp ymobile.ne.jp nifty.com biglobe.ne.jp ocn.ne.jp so-net.ne.jp
    plala.or.jp excite.co.jp infoseek.jp goo.jp rakuten.jp qq.com 163.com naver.com
    example.com example.net example.org example.jp example.co.jp
    """.split()
)
CANDIDATE_LIMIT = 200
#: A domain shared by more accounts than this is a provider's (an ISP's, a group mail host's), not a company's.
SHARED_DOMAIN_ACCOUNTS = 3
_HOST_RE = re.compile(r"^[a-z0-9.-]+\.[a-z]{2,}$")


@dataclass(frozen=True)
class AccountMatch:
    """An existing account and why it matched (``"name"``, ``"domain"``)."""

    account: Mapping[str, Any]
    reasons: tuple[str, ...]

    @property
    def by_name(self) -> bool:
        return "name" in self.reasons


def free_mail_domains(crm: CRM) -> frozenset[str]:
    """The built-in free-mail domains plus ``lead_conversion.free_mail_domains`` of crmkit.yaml."""
    extra = crm.config.section("lead_conversion").get("free_mail_domains") or ()
    return FREE_MAIL_DOMAINS | {str(d).lower().strip() for d in extra}


def email_domain(email: str | None, free: Iterable[str] = FREE_MAIL_DOMAINS) -> str | None:
    """The company domain of an email address; None for free-mail providers and bad input."""
    if not email or "@" not in email:
        return None
    domain = email.rsplit("@", 1)[1].strip().lower().rstrip(".")
    if not _HOST_RE.match(domain) or domain in set(free) or domain.endswith((".example", ".test", ".invalid")):
        return None
    return domain


def web_domain(url: str | None) -> str | None:
    """``https://www.example.co.jp/about`` -> ``example.co.jp`` (None for anything else)."""
    if not url:
        return None
    text = url.strip().lower()
    host = urlsplit(text if "//" in text else "//" + text).hostname or ""
    host = host.removeprefix("www.")
    return host if _HOST_RE.match(host) else None


def match_accounts(crm: CRM, lead: Mapping[str, Any], actor: Actor, *, limit: int = 10) -> list[AccountMatch]:
    """Existing accounts for ``lead``, best first (name and domain, then name, then domain)."""
    store = crm.records
    if "account" not in crm.catalog or not store.can(actor, "read", "account"):
        return []
    found: dict[int, dict[str, Any]] = {}
    reasons: dict[int, list[str]] = {}

    def add(account: Mapping[str, Any], reason: str) -> None:
        found.setdefault(account["id"], dict(account))
        if reason not in reasons.setdefault(account["id"], []):
            reasons[account["id"]].append(reason)

    key = normalize_company(lead.get("company"))
    if key:
        page = store.list("account", actor=actor, q=str(lead["company"]), limit=CANDIDATE_LIMIT,
                          columns=_columns(crm), with_count=False)
        for acc in page.items:
            if normalize_company(acc.get("name")) == key:
                add(acc, "name")
    free = free_mail_domains(crm)
    domains = {d for d in (email_domain(lead.get("email"), free), web_domain(lead.get("website"))) if d}
    for domain in sorted(domains):
        accounts = _accounts_with_domain(crm, domain, actor)
        if len(accounts) <= SHARED_DOMAIN_ACCOUNTS:
            for acc in accounts:
                add(acc, "domain")
    matches = [AccountMatch(found[i], tuple(reasons[i])) for i in found]
    matches.sort(key=lambda m: (-len(m.reasons), not m.by_name, str(m.account.get("name") or "")))
    return matches[:limit]


def best_match(matches: list[AccountMatch]) -> AccountMatch | None:
    """The one account to use without asking, or None (no match, or several equally good ones)."""
    if not matches:
        return None
    top = [m for m in matches if m.reasons == matches[0].reasons]
    return matches[0] if len(top) == 1 else None


def _columns(crm: CRM) -> list[str]:
    ent = crm.catalog["account"]
    return [c for c in ("name", "website", "email", "prefecture", "owner") if c in ent.fields]


def _accounts_with_domain(crm: CRM, domain: str, actor: Actor) -> list[dict[str, Any]]:
    store = crm.records
    ent = crm.catalog["account"]
    conds = []
    if "website" in ent.fields:
        conds.append({"website": {"contains": domain}})
    if "email" in ent.fields:
        conds.append({"email": {"contains": "@" + domain}})
    out: dict[int, dict[str, Any]] = {}
    if conds:
        page = store.list("account", actor=actor, filter={"any": conds}, limit=CANDIDATE_LIMIT,
                          columns=_columns(crm), with_count=False)
        for acc in page.items:
            if web_domain(acc.get("website")) == domain or email_domain(acc.get("email"), ()) == domain:
                out[acc["id"]] = acc
    # Colleagues already in the CRM: the account of a contact with the same email domain.
    if "contact" in crm.catalog and store.can(actor, "read", "contact"):
        page = store.list("contact", actor=actor, filter={"email": {"contains": "@" + domain}},
                          limit=CANDIDATE_LIMIT, columns=["account", "email"], with_count=False)
        ids = {c["account"] for c in page.items if c.get("account") and email_domain(c.get("email"), ()) == domain}
        ids -= set(out)
        if ids:
            page = store.list("account", actor=actor, filter={"id": {"in": sorted(ids)}}, limit=len(ids),
                              columns=_columns(crm), with_count=False)
            out.update({acc["id"]: acc for acc in page.items})
    return list(out.values())
