"""crmkit's admin for the admin benchmark: the CRM on a SQLite file, served by uvicorn like ``crmkit serve``.

The same as ``crmkit serve`` (built-in plugins, ``crm.startup()``, ``crm.asgi()`` under uvicorn)
except that the access log is off, as it is for every app in the benchmark.

Run (by ``bench/bench_admin.py``)::

    python bench/peers/crmkit_app.py --db FILE.sqlite3 --port 8000
"""

from __future__ import annotations

import argparse
import tempfile

import uvicorn

from crmkit import CRM


def main() -> None:
    parser = argparse.ArgumentParser(description="crmkit's admin for the admin benchmark.")
    parser.add_argument("--db", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crmkit-bench-") as project, \
            CRM(project, database_url=f"sqlite:///{args.db}", entry_points=False) as crm:
        crm.config.secret_key = crm.config.secret_key or "bench-only-secret-key-not-for-deployment"
        crm.startup()
        uvicorn.run(crm.asgi(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
