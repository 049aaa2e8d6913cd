"""Login throttling shared across app processes (the ``crmkit_login_throttle`` table).

Two CRM objects on one database stand for two app processes (two uvicorn workers): each has its
own engine, its own AdminSite and its own TestClient, and they share nothing but the database.
Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import threading
import warnings

import pytest
import sqlalchemy as sa

from crmkit import CRM, SchemaError
from crmkit.web.throttle import THROTTLE_TABLE, DatabaseLoginThrottle
from tests.conftest import run_cli
from tests.support import PASSWORD, csrf_of, make_crm, make_org

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


@pytest.fixture
def two(tmp_path, db_url):
    """Two "processes" (CRM objects) on one migrated database, with the test organisation."""
    first = make_crm(tmp_path, db_url)
    make_org(first)
    second = CRM(tmp_path, database_url=db_url, entry_points=False)
    yield first, second
    second.close()
    first.close()


class Browser:
    """A TestClient on one process's app, with the login form's CSRF token at hand."""

    def __init__(self, crm: CRM):
        self.client = TestClient(crm.asgi(), follow_redirects=False)
        self.csrf = csrf_of(self.client.get("/admin/login").text)

    def login(self, username: str, password: str) -> int:
        response = self.client.post(
            "/admin/login", data={"username": username, "password": password, "_csrf": self.csrf}
        )
        return response.status_code


def stored_rows(crm: CRM) -> list[dict]:
    table = crm.system_tables[THROTTLE_TABLE]
    with crm.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(table)).mappings()]


def test_the_lockout_is_shared_between_two_app_processes(two, monkeypatch):
    a, b = Browser(two[0]), Browser(two[1])
    for _ in range(3):
        assert a.login("alice", "wrong") == 401
    for _ in range(2):
        assert b.login("Alice", "wrong") == 401  # the username is matched case-insensitively
    # five failures in all: neither process alone saw five, yet both refuse the right password now
    assert a.login("alice", PASSWORD) == 429
    locked = b.client.post("/admin/login", data={"username": "alice", "password": PASSWORD, "_csrf": b.csrf})
    assert locked.status_code == 429 and "Too many failed attempts" in locked.text
    assert b.login("bob", PASSWORD) == 303  # another user (same address) is not locked out
    # the lock-out ends after 15 minutes, for every process
    import crmkit.web.throttle as throttle

    real = throttle.time.time
    monkeypatch.setattr(throttle.time, "time", lambda: real() + 15 * 60 + 1)
    assert a.login("alice", PASSWORD) == 303


def test_a_good_login_in_one_process_clears_the_count_for_all(two):
    a, b = Browser(two[0]), Browser(two[1])
    for _ in range(4):
        assert a.login("alice", "wrong") == 401
    assert b.login("alice", PASSWORD) == 303
    for _ in range(4):
        assert a.login("alice", "wrong") == 401
    assert Browser(two[1]).login("alice", PASSWORD) == 303  # 4 + 4 failures, but never 5 in a row


def test_one_address_trying_many_usernames_is_locked(tmp_path, db_url):
    (tmp_path / "crmkit.yaml").write_text(
        "login_throttle:\n  max_failures: 10\n  address_max_failures: 4\n  window: 600\n  lockout: 60\n"
    )
    first = make_crm(tmp_path, db_url)
    make_org(first)
    second = CRM(tmp_path, database_url=db_url, entry_points=False)
    try:
        a, b = Browser(first), Browser(second)
        for name in ("alice", "bob", "mia", "nobody"):
            assert a.login(name, "wrong") == 401
        # the address reached its limit: every username is refused from it, on both processes
        assert b.login("admin", PASSWORD) == 429
        assert a.login("bob", PASSWORD) == 429
    finally:
        second.close()
        first.close()


def test_the_table_holds_no_username_or_address_in_clear(two):
    a = Browser(two[0])
    assert a.login("alice", "wrong") == 401
    rows = stored_rows(two[0])
    assert sorted(r["key"].split(":")[0] for r in rows) == ["ip", "user"]
    for row in rows:
        assert "alice" not in row["key"] and "testclient" not in row["key"]
        assert len(json.loads(row["failures"])) == 1


def test_the_window_slides(two):
    crm = two[0]
    now = [1000.0]
    throttle = DatabaseLoginThrottle(
        crm.engine, crm.system_tables[THROTTLE_TABLE], max_failures=3, window=60, lockout=120,
        clock=lambda: now[0],
    )
    throttle.failure("user:a")  # t=1000
    now[0] = 1030
    throttle.failure("user:a")
    now[0] = 1061  # the first failure left the window: two in the last minute
    throttle.failure("user:a")
    assert throttle.retry_after("user:a") == 0
    now[0] = 1062  # three within a minute (1030, 1061, 1062): locked for two minutes
    throttle.failure("user:a")
    assert throttle.retry_after("user:a") == pytest.approx(120)
    assert throttle.retry_after("user:b") == 0
    assert throttle.retry_after("user:b", "user:a") == pytest.approx(120)
    now[0] = 1062 + 121
    assert throttle.retry_after("user:a") == 0
    # after the lock-out the count starts again from zero
    throttle.failure("user:a")
    assert throttle.retry_after("user:a") == 0


def test_limits_per_kind_of_key(two):
    crm = two[0]
    throttle = DatabaseLoginThrottle(
        crm.engine, crm.system_tables[THROTTLE_TABLE], max_failures=2, limits={"ip": 3}, clock=lambda: 5000.0
    )
    throttle.failure("user:x", "ip:10.0.0.1")
    throttle.failure("user:y", "ip:10.0.0.1")
    assert throttle.retry_after("ip:10.0.0.1") == 0  # two failures: under the address limit of 3
    throttle.failure("user:x", "ip:10.0.0.1")
    assert throttle.retry_after("user:x") > 0 and throttle.retry_after("ip:10.0.0.1") > 0
    assert throttle.retry_after("user:y") == 0
    throttle.success("user:x")
    assert throttle.retry_after("user:x") == 0 and throttle.retry_after("ip:10.0.0.1") > 0


def test_concurrent_failures_from_two_processes_are_all_counted(two):
    """Eight threads over two engines fail at once on one key: no increment may be lost."""
    throttles = [
        DatabaseLoginThrottle(crm.engine, crm.system_tables[THROTTLE_TABLE], max_failures=1000) for crm in two
    ]
    per_thread, threads_per_process = 10, 4
    errors: list[BaseException] = []
    start = threading.Barrier(len(throttles) * threads_per_process)

    def hammer(throttle: DatabaseLoginThrottle) -> None:
        try:
            start.wait()
            for _ in range(per_thread):
                throttle.failure("user:target", "ip:192.0.2.1")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(t,)) for t in throttles for _ in range(threads_per_process)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    total = per_thread * len(threads)
    rows = {r["key"].split(":")[0]: r for r in stored_rows(two[0])}
    assert len(json.loads(rows["user"]["failures"])) == total
    assert len(json.loads(rows["ip"]["failures"])) == total


def test_concurrent_failures_reach_the_limit_exactly(two):
    """With a limit of 12 and 12 simultaneous failures the key must end up locked."""
    throttles = [
        DatabaseLoginThrottle(crm.engine, crm.system_tables[THROTTLE_TABLE], max_failures=12) for crm in two
    ]
    start = threading.Barrier(12)

    def once(throttle: DatabaseLoginThrottle) -> None:
        start.wait()
        throttle.failure("user:target")

    threads = [threading.Thread(target=once, args=(throttles[i % 2],)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert throttles[1].retry_after("user:target") > 0
    assert throttles[0].retry_after("user:target") > 0


def test_stale_rows_are_purged(two):
    crm = two[0]
    now = [0.0]
    throttle = DatabaseLoginThrottle(
        crm.engine, crm.system_tables[THROTTLE_TABLE], max_failures=5, window=60, lockout=120,
        clock=lambda: now[0],
    )
    throttle.failure("user:old")
    now[0] = 10.0
    for _ in range(5):
        throttle.failure("user:locked")  # locked until 130
    now[0] = 100.0
    throttle.failure("user:new")  # purges "old" (out of the window), keeps "locked" (still locked)
    keys = {r["key"] for r in stored_rows(crm)}
    assert keys == {throttle.stored_key("user:locked"), throttle.stored_key("user:new")}


def test_a_secret_key_changes_the_stored_keys(two):
    crm = two[0]
    table = crm.system_tables[THROTTLE_TABLE]
    plain = DatabaseLoginThrottle(crm.engine, table)
    keyed = DatabaseLoginThrottle(crm.engine, table, secret="a-long-enough-secret")
    assert plain.stored_key("user:alice") != keyed.stored_key("user:alice")
    assert keyed.stored_key("user:alice") == DatabaseLoginThrottle(
        crm.engine, table, secret="a-long-enough-secret"
    ).stored_key("user:alice")


def test_a_damaged_row_does_not_break_logins(two):
    crm = two[0]
    table = crm.system_tables[THROTTLE_TABLE]
    throttle = DatabaseLoginThrottle(crm.engine, table, max_failures=2)
    throttle.failure("user:alice")
    with crm.engine.begin() as conn:
        conn.execute(sa.update(table).values(failures="not json"))
    throttle.failure("user:alice")  # the damaged history counts as empty: one failure, not locked
    assert throttle.retry_after("user:alice") == 0


def test_crmkit_user_unlock_lifts_the_lockout(two, tmp_path, db_url):
    a = Browser(two[0])
    for _ in range(5):
        a.login("alice", "wrong")
    assert a.login("alice", PASSWORD) == 429
    result = run_cli("user", "unlock", "ALICE", cwd=tmp_path, env={"CRMKIT_DATABASE_URL": db_url})
    assert result.returncode == 0, result.stderr
    assert "unlocked ALICE" in result.stdout
    assert Browser(two[1]).login("alice", PASSWORD) == 303


@pytest.mark.parametrize(
    "section, problem",
    [
        ("login_throttle: {max_failures: 0}", "max_failures"),
        ("login_throttle: {window: soon}", "window"),
        ("login_throttle: {lockout_minutes: 5}", "lockout_minutes"),
    ],
)
def test_bad_throttle_settings_are_reported_with_their_line(tmp_path, section, problem):
    (tmp_path / "crmkit.yaml").write_text("locale: en\n" + section + "\n")
    with pytest.raises(SchemaError) as info:
        CRM(tmp_path, database_url=f"sqlite:///{tmp_path / 'x.db'}", entry_points=False)
    text = str(info.value)
    assert "crmkit.yaml:2" in text and problem in text


def test_without_the_table_logins_still_work_and_are_throttled_per_process(two, caplog):
    """A database not migrated since an upgrade: no 500 at the login form, a per-process lock-out."""
    crm = two[0]
    with crm.engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {THROTTLE_TABLE}"))
    assert Browser(crm).login("alice", PASSWORD) == 303
    a = Browser(crm)
    for _ in range(5):
        assert a.login("bob", "wrong") == 401
    assert a.login("bob", PASSWORD) == 429
    assert "run `crmkit migrate`" in caplog.text
