"""Serve the Django peer of the admin benchmark (runs from bench/.venv-peers, never crmkit's venv).

Prepares Django's own small database (``migrate`` + the admin superuser from ``BENCH_ADMIN_USER``
/ ``BENCH_ADMIN_PASSWORD``), then serves the project with uvicorn (ASGI, the same server as every
other app in the benchmark) or waitress (WSGI).

Environment: ``BENCH_DB`` (crmkit's SQLite file), ``BENCH_DJANGO_DB`` (Django's own), ``BENCH_CHOICES``.

Run::

    bench/.venv-peers/bin/python bench/peers/django_site/serve.py --port 8003 [--server asgi|wsgi]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchsite.settings")


def prepare() -> None:
    """Create Django's tables and the admin superuser (idempotent)."""
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", database="default", interactive=False, verbosity=0)
    from django.contrib.auth import get_user_model

    users = get_user_model()
    username, password = os.environ["BENCH_ADMIN_USER"], os.environ["BENCH_ADMIN_PASSWORD"]
    if not users.objects.filter(username=username).exists():
        users.objects.create_superuser(username, f"{username}@example.com", password)


def main() -> None:
    parser = argparse.ArgumentParser(description="The Django peer of the admin benchmark.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server", choices=["asgi", "wsgi"], default="wsgi")
    args = parser.parse_args()
    prepare()
    if args.server == "asgi":
        import uvicorn
        from benchsite.asgi import application

        uvicorn.run(application, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    else:
        import waitress
        from benchsite.wsgi import application

        # one worker thread: every app in the benchmark answers one request at a time
        waitress.serve(application, host="127.0.0.1", port=args.port, threads=1, _quiet=True)


if __name__ == "__main__":
    main()
