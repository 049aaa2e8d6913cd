"""Sample data for ``crmkit demo``: a small Japanese sales company with some English-speaking accounts.

Everything is written through RecordStore as the SYSTEM actor (so validation, computed fields,
search text and audit behave as in real use), in one transaction. Faker's ``ja_JP`` and ``en_US``
locales give names; the numbers (stages with probabilities, amounts, dates) follow a plausible
B2B pipeline so every admin page has something to show: dashboards with today's visits and
open tasks, a kanban with deals in every stage, 360° pages with contacts, deals and timelines.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from crmkit.core.actors import SYSTEM

if TYPE_CHECKING:
    from crmkit.app import CRM
    from crmkit.core.records import Tx

JST = ZoneInfo("Asia/Tokyo")
DEMO_USERNAMES = ("admin", "tanaka", "sato", "suzuki", "takahashi", "yamamoto", "emily")

STAGES = [  # name, probability, closed, won, colour
    ("初回接触", 10, False, False, "#64748b"),
    ("ヒアリング", 20, False, False, "#0891b2"),
    ("提案", 40, False, False, "#2563eb"),
    ("見積提示", 60, False, False, "#7c3aed"),
    ("交渉", 80, False, False, "#ea580c"),
    ("受注", 100, True, True, "#16a34a"),
    ("失注", 0, True, False, "#dc2626"),
]
CATEGORIES = [("ソフトウェア", "Software"), ("ハードウェア", "Hardware"), ("サービス", "Services")]
PRODUCTS = [  # name, code, category index, unit price
    ("CRMクラウド スタンダード（年額）", "CRM-STD", 0, 360_000),
    ("CRMクラウド エンタープライズ（年額）", "CRM-ENT", 0, 1_200_000),
    ("モバイルSFAオプション", "SFA-MOB", 0, 120_000),
    ("名刺スキャナー BS-10", "HW-BS10", 1, 48_000),
    ("ハンディターミナル HT-200", "HW-HT200", 1, 98_000),
    ("導入支援サービス", "SV-IMPL", 2, 500_000),
    ("データ移行サービス", "SV-MIG", 2, 300_000),
    ("保守サポート（年間）", "SV-SUP", 2, 240_000),
]
CAMPAIGNS = [  # name, type, status, start offset (days), length, budget, cost
    ("Japan IT Week 2026 春 出展", "event", "completed", -200, 3, 2_500_000, 2_380_000),
    ("ウェビナー「営業DX入門」", "webinar", "completed", -60, 1, 150_000, 120_000),
    ("リスティング広告 Q4", "advertisement", "active", -40, 90, 900_000, 410_000),
    ("メールマガジン 11月号", "email", "active", -10, 30, 50_000, 30_000),
    ("Partner Summit Tokyo", "seminar", "planned", 30, 1, 800_000, 0),
]
SUFFIXES = [
    ("商事", "ショウジ"),
    ("工業", "コウギョウ"),
    ("製作所", "セイサクショ"),
    ("物産", "ブッサン"),
    ("建設", "ケンセツ"),
    ("運輸", "ウンユ"),
    ("電機", "デンキ"),
    ("システムズ", "システムズ"),
    ("食品", "ショクヒン"),
    ("化学", "カガク"),
    ("ホールディングス", "ホールディングス"),
    ("精機", "セイキ"),
]
INDUSTRY_BY_SUFFIX = {
    "商事": "wholesale",
    "工業": "manufacturing",
    "製作所": "manufacturing",
    "物産": "wholesale",
    "建設": "construction",
    "運輸": "transportation",
    "電機": "manufacturing",
    "システムズ": "it",
    "食品": "manufacturing",
    "化学": "manufacturing",
    "ホールディングス": "finance",
    "精機": "manufacturing",
}
EN_ACCOUNTS = [
    ("Acme Robotics Inc.", "manufacturing", "acme-robotics.com"),
    ("Globex Trading Co., Ltd.", "wholesale", "globex.co.jp"),
    ("Northwind Logistics KK", "transportation", "northwind.jp"),
    ("Blue Harbor Software LLC", "it", "blueharbor.io"),
]
TITLES = ["代表取締役", "部長", "課長", "係長", "主任", "担当"]
DEPARTMENTS = ["営業部", "情報システム部", "総務部", "購買部", "経営企画部", "製造部"]
PREFS = [
    ("東京都", "千代田区", "丸の内"),
    ("東京都", "港区", "芝浦"),
    ("大阪府", "大阪市北区", "梅田"),
    ("愛知県", "名古屋市中村区", "名駅"),
    ("神奈川県", "横浜市西区", "みなとみらい"),
    ("福岡県", "福岡市博多区", "博多駅前"),
    ("北海道", "札幌市中央区", "北一条西"),
]
VISIT_SUBJECTS = [
    "定例訪問",
    "提案書のご説明",
    "導入効果のヒアリング",
    "デモンストレーション",
    "契約条件の打ち合わせ",
    "現場視察",
]
CALL_SUBJECTS = ["フォローアップの電話", "見積内容の確認", "導入スケジュールの確認", "キーパーソンへのご挨拶"]
TASK_SUBJECTS = [
    "見積書を送付する",
    "提案資料を作成する",
    "議事録を共有する",
    "契約書のドラフトを確認する",
    "名刺データを入力する",
    "お礼メールを送る",
    "社内稟議の状況を確認する",
]
RESULTS = [
    "先方の課題を整理。次回は具体的な構成案を提示する。",
    "決裁者が同席。予算感は合っているとのこと。",
    "競合との比較検討中。価格より導入支援を重視。",
    "デモの反応は良好。現場担当者の評価も高い。",
    "来期予算での検討となる見込み。",
]


@dataclass
class DemoSummary:
    """What :func:`fill_demo` created (counts per entity) and the users' logins."""

    counts: dict[str, int] = field(default_factory=dict)
    users: list[tuple[str, str]] = field(default_factory=list)  # (username, role)


def is_filled(crm: CRM) -> bool:
    """True when the database already holds demo (or any) accounts and users."""
    import sqlalchemy as sa

    with crm.engine.connect() as conn:
        return bool(conn.execute(sa.select(sa.func.count()).select_from(crm.table("user"))).scalar_one())


def fill_demo(crm: CRM, *, password: str, seed: int = 2026, scale: int = 1) -> DemoSummary:
    """Create the demo company; ``password`` is every demo user's password (admin included)."""
    from faker import Faker

    rnd = random.Random(seed)
    Faker.seed(seed)
    ja, en = Faker("ja_JP"), Faker("en_US")
    summary = DemoSummary()
    from crmkit.core.passwords import hash_password

    hashed = hash_password(password)  # one (slow, on purpose) argon2 hash shared by the demo users
    with crm.records.transaction(actor=SYSTEM, source="demo") as tx:
        b = _Builder(tx, rnd, ja, en, summary)
        b.org(hashed)
        b.catalogue()
        b.customers(scale)
        b.leads(30 * scale)
        b.deals(45 * scale)
        b.won_history(30 * scale)
        b.activities()
    _convert_some_leads(crm, b.lead_list, summary)
    _workflow_samples(crm, b, summary)
    return summary


def _workflow_samples(crm: CRM, b: _Builder, summary: DemoSummary) -> None:
    """Reviewers on today's visits, a weekly recurring report task, business cards awaiting data entry."""
    from crmkit.plugins.business_cards import add_cards, demo_card
    from crmkit.web.auth import actor_for, load_user

    if crm.pm.get_plugin("crmkit.plugins.activities") is None:
        return
    managers = {u["primary_team"]: u["id"] for u in b.users.values() if u["role"] == "manager"}
    today = crm.records.list("activity", actor=SYSTEM, filter={"type": "visit", "status": "planned"},
                             sort="due_at", limit=200, columns=["owner", "team"], with_count=False).items
    with crm.records.transaction(actor=SYSTEM, source="demo") as tx:
        for visit in today[::2]:  # every other planned visit is confirmed by the team's manager
            reviewer = managers.get(visit.get("team"))
            if reviewer and reviewer != visit.get("owner"):
                tx.update("activity", visit["id"], {"reviewer": reviewer})
        friday = b.today + dt.timedelta(days=(4 - b.today.weekday()) % 7)
        for user in b.reps:
            due = dt.datetime(friday.year, friday.month, friday.day, 17, tzinfo=JST)
            tx.create("activity", {"subject": "週次営業報告の提出" if user["locale"] == "ja" else "Weekly sales report",
                                   "type": "task", "assignee": user["id"], "due_at": due,
                                   "reminder_at": due - dt.timedelta(hours=2), "recurrence": "FREQ=WEEKLY;BYDAY=FR"})
    if crm.pm.get_plugin("crmkit.plugins.business_cards") is None:
        return
    for lead in [x for x in b.lead_list if x.get("source") == "business_card" and x.get("status") == "new"][:3]:
        owner = load_user(crm, user_id=lead["owner"])
        if owner is None:
            continue
        manager = managers.get(lead.get("team"))
        add_cards(crm, "lead", lead["id"], [("card.png", demo_card(lead))], actor_for(crm, owner), manager)
        summary.counts["business cards"] = summary.counts.get("business cards", 0) + 1


def _convert_some_leads(crm: CRM, leads: list[dict[str, Any]], summary: DemoSummary) -> None:
    """Convert the qualified leads (each its own transaction) so conversion rates have something to show."""
    if crm.pm.get_plugin("crmkit.plugins.lead_conversion") is None:
        return
    from crmkit.core.errors import CRMError
    from crmkit.plugins.lead_conversion import convert_lead

    for lead in leads:
        if lead.get("status") != "qualified":
            continue
        try:
            convert_lead(crm, lead["id"], SYSTEM, account="auto", source="demo")
        except CRMError:  # e.g. several equally good account matches: a person would choose
            continue
        summary.counts["converted leads"] = summary.counts.get("converted leads", 0) + 1


class _Builder:
    def __init__(self, tx: Tx, rnd: random.Random, ja: Any, en: Any, summary: DemoSummary):
        self.tx, self.rnd, self.ja, self.en, self.summary = tx, rnd, ja, en, summary
        self.now = dt.datetime.now(dt.UTC)
        self.today = dt.datetime.now(JST).date()
        self.users: dict[str, dict[str, Any]] = {}
        self.reps: list[dict[str, Any]] = []
        self.accounts: list[dict[str, Any]] = []
        self.contacts: dict[int, list[dict[str, Any]]] = {}
        self.deal_list: list[dict[str, Any]] = []
        self.lead_list: list[dict[str, Any]] = []

    def add(self, entity: str, values: dict[str, Any]) -> dict[str, Any]:
        record = self.tx.create(entity, values)
        self.summary.counts[entity] = self.summary.counts.get(entity, 0) + 1
        return record

    def owned(self, user: dict[str, Any]) -> dict[str, Any]:
        return {"owner": user["id"], "team": user["primary_team"]}

    # -- people -----------------------------------------------------------------------------------
    def org(self, password_hash: str) -> None:
        teams = {
            key: self.add("team", {"name": name, "description": desc})
            for key, name, desc in [
                ("tokyo", "東京営業部", "首都圏の法人営業を担当します。"),
                ("osaka", "大阪営業部", "関西・中部エリアの法人営業を担当します。"),
                ("global", "Global Accounts", "Accounts of international customers, in English."),
            ]
        }
        people = [  # username, display name, role, team, locale, email
            ("admin", "管理者 Admin", "admin", "tokyo", "en", "admin@example.com"),
            ("tanaka", "田中 一郎", "manager", "tokyo", "ja", "tanaka@example.com"),
            ("sato", "佐藤 花子", "sales_rep", "tokyo", "ja", "sato@example.com"),
            ("suzuki", "鈴木 健太", "sales_rep", "tokyo", "ja", "suzuki@example.com"),
            ("takahashi", "高橋 美咲", "sales_rep", "osaka", "ja", "takahashi@example.com"),
            ("yamamoto", "山本 翔", "manager", "osaka", "ja", "yamamoto@example.com"),
            ("emily", "Emily Carter", "sales_rep", "global", "en", "emily@example.com"),
        ]
        for username, name, role, team, locale, email in people:
            user = self.add(
                "user",
                {
                    "username": username,
                    "display_name": name,
                    "role": role,
                    "email": email,
                    "password": password_hash,
                    "primary_team": teams[team]["id"],
                    "locale": locale,
                    "time_zone": "Asia/Tokyo",
                    "active": True,
                },
            )
            self.users[username] = user
            self.summary.users.append((username, role))
            if role != "manager":
                self.reps.append(user)
        members = {
            "tokyo": ["tanaka", "sato", "suzuki", "admin"],
            "osaka": ["yamamoto", "takahashi"],
            "global": ["emily", "admin"],
        }
        managers = {"tokyo": "tanaka", "osaka": "yamamoto", "global": "admin"}
        for key, names in members.items():
            self.tx.update(
                "team",
                teams[key]["id"],
                {
                    "manager": self.users[managers[key]]["id"],
                    "members": [
                        {"id": self.users[n]["id"], "role": "manager" if n == managers[key] else "member"}
                        for n in names
                    ],
                },
            )

    # -- master data ------------------------------------------------------------------------------
    def catalogue(self) -> None:
        self.stages = [
            self.add(
                "deal_stage",
                {
                    "name": name,
                    "sort_order": (i + 1) * 10,
                    "probability": p,
                    "is_closed": closed,
                    "is_won": won,
                    "color": color,
                },
            )
            for i, (name, p, closed, won, color) in enumerate(STAGES)
        ]
        cats = [
            self.add("product_category", {"name": ja, "description": en, "sort_order": i})
            for i, (ja, en) in enumerate(CATEGORIES)
        ]
        self.products = [
            self.add(
                "product",
                {"name": n, "code": c, "category": cats[ci]["id"], "unit_price": price, "active": True},
            )
            for n, c, ci, price in PRODUCTS
        ]
        admin = self.users["admin"]
        self.campaigns = []
        for name, kind, status, start, days, budget, cost in CAMPAIGNS:
            begin = self.today + dt.timedelta(days=start)
            self.campaigns.append(
                self.add(
                    "marketing_activity",
                    {
                        "name": name,
                        "type": kind,
                        "status": status,
                        "start_date": begin,
                        "end_date": begin + dt.timedelta(days=days),
                        "budget": budget,
                        "cost": cost,
                        "expected_revenue": budget * 6,
                        **self.owned(admin),
                    },
                )
            )

    # -- accounts and contacts ----------------------------------------------------------------------
    def customers(self, scale: int) -> None:
        rnd, ja = self.rnd, self.ja
        used: set[str] = set()
        for i in range(32 * scale):
            last, last_kana, last_ro = ja.last_name_pair()
            slug = f"{last_ro.lower()}{i}"
            suffix, suffix_kana = rnd.choice(SUFFIXES)
            name = f"株式会社{last}{suffix}" if rnd.random() < 0.8 else f"{last}{suffix}株式会社"
            if name in used:
                continue
            used.add(name)
            pref, city, town = rnd.choice(PREFS)
            owner = rnd.choice(self.reps[:-1] + [self.users["tanaka"]])
            account = self.add(
                "account",
                {
                    "name": name,
                    "name_kana": last_kana + suffix_kana,
                    "account_number": f"A-{1001 + i}",
                    "industry": INDUSTRY_BY_SUFFIX[suffix],
                    "type": rnd.choice(["customer"] * 3 + ["prospect"] * 2 + ["partner"]),
                    "rank": rnd.choice(["A", "B", "B", "C", "C"]),
                    "website": f"https://www.{slug}.co.jp",
                    "phone": _phone(rnd),
                    "prefecture": pref,
                    "address": {
                        "postal_code": f"{rnd.randint(100, 999)}-{rnd.randint(1000, 9999)}",
                        "prefecture": pref,
                        "city": city,
                        "street": f"{town}{rnd.randint(1, 5)}-{rnd.randint(1, 20)}-{rnd.randint(1, 9)}",
                    },
                    "annual_revenue": rnd.choice([5, 12, 30, 80, 150, 400, 1200]) * 100_000_000,
                    "employees": rnd.choice([25, 60, 120, 300, 850, 2400, 12000]),
                    "description": rnd.choice(
                        [
                            "既存システムの老朽化が課題。",
                            "営業拠点が全国に分散している。",
                            "紙の名刺管理からの脱却を検討中。",
                            "",
                        ]
                    )
                    or None,
                    **self.owned(owner),
                },
            )
            self.accounts.append(account)
            self._contacts(account, owner, rnd.randint(1, 3), slug)
        emily = self.users["emily"]
        for name, industry, domain in EN_ACCOUNTS:
            account = self.add(
                "account",
                {
                    "name": name,
                    "industry": industry,
                    "type": "customer",
                    "rank": "A",
                    "website": f"https://{domain}",
                    "phone": "+81 3-" + f"{rnd.randint(1000, 9999)}-{rnd.randint(1000, 9999)}",
                    "prefecture": "東京都",
                    "address": {
                        "prefecture": "東京都",
                        "city": "港区",
                        "street": "六本木6-10-1",
                        "country": "Japan",
                    },
                    "employees": rnd.choice([150, 900, 3000]),
                    **self.owned(emily),
                },
            )
            self.accounts.append(account)
            for _ in range(2):
                first, last = self.en.first_name(), self.en.last_name()
                contact = self.add(
                    "contact",
                    {
                        "account": account["id"],
                        "last_name": last,
                        "first_name": first,
                        "title": rnd.choice(["CEO", "VP Sales", "IT Manager", "Procurement Lead"]),
                        "department": rnd.choice(["Sales", "IT", "Operations"]),
                        "email": f"{first.lower()}.{last.lower()}@{domain}",
                        "phone": _phone(rnd),
                        **self.owned(emily),
                    },
                )
                self.contacts.setdefault(account["id"], []).append(contact)

    def _contacts(self, account: dict[str, Any], owner: dict[str, Any], n: int, domain: str) -> None:
        rnd, ja = self.rnd, self.ja
        for _ in range(n):
            last, last_kana, last_ro = ja.last_name_pair()
            first, first_kana, first_ro = ja.first_name_pair()
            contact = self.add(
                "contact",
                {
                    "account": account["id"],
                    "last_name": last,
                    "first_name": first,
                    "last_name_kana": last_kana,
                    "first_name_kana": first_kana,
                    "title": rnd.choice(TITLES),
                    "department": rnd.choice(DEPARTMENTS),
                    "email": f"{first_ro.lower()}.{last_ro.lower()}@{domain}.co.jp",
                    "phone": account["phone"],
                    "mobile": f"090-{rnd.randint(1000, 9999)}-{rnd.randint(1000, 9999)}",
                    **self.owned(owner),
                },
            )
            self.contacts.setdefault(account["id"], []).append(contact)

    # -- leads ------------------------------------------------------------------------------------
    def leads(self, n: int) -> None:
        rnd, ja = self.rnd, self.ja
        statuses = ["new"] * 4 + ["working"] * 3 + ["nurturing"] * 2 + ["qualified"] * 2 + ["unqualified"]
        sources = ["web", "referral", "event", "business_card", "sns", "cold_call", "advertisement"]
        for _ in range(n):
            owner = rnd.choice(self.reps)
            english = owner is self.users["emily"] and rnd.random() < 0.7
            if english:
                first, last = self.en.first_name(), self.en.last_name()
                values = {
                    "last_name": last,
                    "first_name": first,
                    "company": self.en.company(),
                    "email": f"{first.lower()}@{last.lower()}.example.com",
                    "title": "Manager",
                }
            else:
                last, last_kana, last_ro = ja.last_name_pair()
                first, first_kana, first_ro = ja.first_name_pair()
                suffix, _ = rnd.choice(SUFFIXES)
                values = {
                    "last_name": last,
                    "first_name": first,
                    "last_name_kana": last_kana,
                    "first_name_kana": first_kana,
                    "company": f"株式会社{ja.last_name()}{suffix}",
                    "email": f"{first_ro.lower()}.{last_ro.lower()}@example.jp",
                    "title": rnd.choice(TITLES),
                    "department": rnd.choice(DEPARTMENTS),
                }
            status = rnd.choice(statuses)
            pref = rnd.choice(PREFS)[0]
            values.update(
                {
                    "phone": _phone(rnd),
                    "prefecture": pref,
                    "status": status,
                    "source": rnd.choice(sources),
                    "rating": rnd.choice(["hot", "warm", "warm", "cold"]),
                    "industry": rnd.choice(
                        ["manufacturing", "it", "wholesale", "retail", "construction", "services"]
                    ),
                    "employees": rnd.choice([10, 45, 120, 600]),
                    "marketing_activity": rnd.choice(self.campaigns)["id"] if rnd.random() < 0.5 else None,
                    "product_interest": rnd.choice(self.products)["id"] if rnd.random() < 0.6 else None,
                    **self.owned(owner),
                }
            )
            if status == "unqualified":
                values["unqualified_reason"] = "予算の確保が難しいとのこと。"
            self.lead_list.append(self.add("lead", values))

    # -- deals ------------------------------------------------------------------------------------
    def deals(self, n: int) -> None:
        rnd = self.rnd
        weights = [8, 8, 9, 7, 5, 6, 4]
        open_stages = [st for st, spec in zip(self.stages, STAGES, strict=True) if not spec[2]]
        for i in range(n):
            account = self.accounts[i % len(self.accounts)]
            stage_i = rnd.choices(range(len(self.stages)), weights)[0]
            _name, _p, closed, won, _c = STAGES[stage_i]
            close = self.today + dt.timedelta(days=rnd.randint(-60, -1) if closed else rnd.randint(3, 120))
            owner = next(
                (u for u in self.reps + [self.users["tanaka"]] if u["id"] == account["owner"]),
                rnd.choice(self.reps),
            )
            if i % 9 == 0:
                owner = self.users["admin"]
            self.deal_list.append(
                self._deal(account, owner, self.stages[stage_i] if not closed else rnd.choice(open_stages), close,
                           closing=(self.stages[stage_i], won) if closed else None)
            )

    def won_history(self, n: int) -> None:
        """Deals won over the last two years, repeat customers first, so RFM ranking and ROI mean something."""
        rnd = self.rnd
        open_stages = [st for st, spec in zip(self.stages, STAGES, strict=True) if not spec[2]]
        won_stage = next(st for st, spec in zip(self.stages, STAGES, strict=True) if spec[3])
        regulars = self.accounts[: max(6, len(self.accounts) // 3)]
        for i in range(n):
            account = rnd.choice(regulars) if i % 3 else rnd.choice(self.accounts)
            owner = next((u for u in self.users.values() if u["id"] == account["owner"]), rnd.choice(self.reps))
            close = self.today - dt.timedelta(days=rnd.randint(30, 720))
            self._deal(account, owner, rnd.choice(open_stages), close, closing=(won_stage, True))

    def _deal(self, account: dict[str, Any], owner: dict[str, Any], stage: dict[str, Any], close: dt.date,
              closing: tuple[dict[str, Any], bool] | None) -> dict[str, Any]:
        """A deal with 1-3 line items (its amount is their total), then closed won/lost if asked."""
        rnd = self.rnd
        lines = rnd.sample(self.products, rnd.randint(1, 3))
        contact = rnd.choice(self.contacts.get(account["id"]) or [None])
        product_name = lines[0]["name"].split("（")[0]
        deal = self.add(
            "deal",
            {
                "name": f"{account['name'].replace('株式会社', '').strip()} {product_name}",
                "account": account["id"],
                "contact": contact["id"] if contact else None,
                "stage": stage["id"],
                "close_date": close,
                "type": rnd.choice(["new_business", "existing_business", "upsell", "renewal"]),
                "source": rnd.choice(["web", "referral", "event", "business_card"]),
                "marketing_activity": rnd.choice(self.campaigns)["id"] if rnd.random() < 0.4 else None,
                "next_step": None
                if closing
                else rnd.choice(["見積書の提出", "決裁者との面談設定", "デモ環境の準備", "契約書レビュー"]),
                **self.owned(owner),
            },
        )
        for j, prod in enumerate(lines):
            self.add(
                "deal_line_item",
                {
                    "deal": deal["id"],
                    "product": prod["id"],
                    "quantity": rnd.choice([1, 1, 2, 5, 10]),
                    "discount": rnd.choice([0, 0, 0, 5, 10]),
                    "sort_order": j,
                },
            )
        if closing is not None:
            stage, won = closing
            values: dict[str, Any] = {"stage": stage["id"], "close_date": close}
            if won:
                values["won_reason"] = rnd.choice(
                    ["導入支援の手厚さが評価された。", "既存システムとの連携実績が決め手。"]
                )
            else:
                values["lost_reason"] = rnd.choice(["価格で競合に敗れた。", "プロジェクトが凍結された。"])
            self.tx.update("deal", deal["id"], values)
        return self.tx.get("deal", deal["id"])

    # -- activities ---------------------------------------------------------------------------------
    def activities(self) -> None:
        rnd = self.rnd
        start_today = dt.datetime(self.today.year, self.today.month, self.today.day, tzinfo=JST)
        for deal in self.deal_list:
            owner_id = deal["owner"]
            owner = next(u for u in self.users.values() if u["id"] == owner_id)
            contacts = self.contacts.get(deal["account"]) or []
            for _ in range(rnd.randint(1, 4)):  # history: done calls, visits, meetings
                kind = rnd.choice(["call", "visit", "meeting", "email"])
                when = start_today - dt.timedelta(
                    days=rnd.randint(2, 90), hours=-rnd.choice([10, 11, 14, 15, 16])
                )
                self._activity(
                    owner,
                    kind,
                    "done",
                    when,
                    deal=deal,
                    contact=rnd.choice(contacts or [None]),
                    result=rnd.choice(RESULTS),
                    outcome=rnd.choice(["positive", "neutral", "negative"]),
                )
            if deal["status"] == "open" and rnd.random() < 0.6:  # something planned
                when = start_today + dt.timedelta(days=rnd.randint(1, 20), hours=rnd.choice([10, 13, 15]))
                self._activity(
                    owner,
                    rnd.choice(["visit", "call", "meeting"]),
                    "planned",
                    when,
                    deal=deal,
                    contact=rnd.choice(contacts or [None]),
                )
        for user in list(self.users.values()):  # today's visits and open tasks for everyone who sells
            if user["role"] == "manager" and user["username"] != "tanaka":
                continue
            own = [
                d for d in self.deal_list if d["owner"] == user["id"] and d["status"] == "open"
            ] or self.deal_list[:3]
            for hour in rnd.sample([10, 13, 15, 17], 2):
                deal = rnd.choice(own)
                self._activity(
                    user,
                    "visit",
                    "planned",
                    start_today + dt.timedelta(hours=hour),
                    deal=deal,
                    contact=rnd.choice(self.contacts.get(deal["account"]) or [None]),
                    location=rnd.choice(["先方本社 会議室", "先方 工場", "オンライン（Teams）"]),
                )
            for j in range(rnd.randint(3, 5)):
                deal = rnd.choice(own)
                due = start_today + dt.timedelta(days=rnd.randint(-3, 7), hours=18)
                self._activity(
                    user,
                    "task",
                    "planned",
                    due,
                    deal=deal,
                    priority="high" if j == 0 else rnd.choice(["normal", "low"]),
                    subject=rnd.choice(TASK_SUBJECTS),
                )
        for lead in self.lead_list[:12]:
            owner = next(u for u in self.users.values() if u["id"] == lead["owner"])
            self._activity(
                owner,
                rnd.choice(["call", "email"]),
                "done",
                start_today - dt.timedelta(days=rnd.randint(1, 30), hours=-11),
                lead=lead,
                result="資料請求へのお礼と今後のご案内。",
            )

    def _activity(
        self,
        user: dict[str, Any],
        kind: str,
        status: str,
        when: dt.datetime,
        *,
        deal: dict[str, Any] | None = None,
        contact: dict[str, Any] | None = None,
        lead: dict[str, Any] | None = None,
        result: str | None = None,
        outcome: str | None = None,
        location: str | None = None,
        priority: str = "normal",
        subject: str | None = None,
    ) -> None:
        rnd = self.rnd
        if subject is None:
            subject = rnd.choice(
                {
                    "visit": VISIT_SUBJECTS,
                    "meeting": VISIT_SUBJECTS,
                    "call": CALL_SUBJECTS,
                    "email": ["資料送付のご連絡", "お見積りのご送付"],
                    "task": TASK_SUBJECTS,
                }[kind]
            )
        values: dict[str, Any] = {
            "subject": subject,
            "type": kind,
            "status": status,
            "priority": priority,
            "due_at": when.astimezone(dt.UTC),
            "duration_minutes": 60 if kind in ("visit", "meeting") else 15,
            "assignee": user["id"],
            "account": deal["account"] if deal else None,
            "deal": deal["id"] if deal else None,
            "contact": contact["id"] if contact else None,
            "lead": lead["id"] if lead else None,
            **self.owned(user),
        }
        if kind in ("visit", "meeting"):
            values["location"] = location or rnd.choice(["先方本社", "当社 会議室A", "オンライン"])
            values["purpose"] = rnd.choice(["課題のヒアリング", "提案内容の説明", "見積条件の調整"])
        if status == "done":
            values.update(result=result, outcome=outcome, completed_at=when.astimezone(dt.UTC))
        self.add("activity", values)


def _phone(rnd: random.Random) -> str:
    area = rnd.choice(["03", "06", "045", "052", "092", "011"])
    if len(area) == 2:
        return f"{area}-{rnd.randint(1000, 9999)}-{rnd.randint(1000, 9999)}"
    return f"{area}-{rnd.randint(100, 999)}-{rnd.randint(1000, 9999)}"
