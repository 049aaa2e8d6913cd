"""Django settings of the admin benchmark's Django peer: production-like (DEBUG off), two databases.

``default`` is a small SQLite file of Django's own (users, content types, the admin log);
``crm`` is the benchmark's crmkit database, reached only by the unmanaged models of the ``crm``
app (see ``benchsite.routers``). Paths come from the environment (set by bench_admin.py).
"""

import os

BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET_KEY = os.environ.get("BENCH_DJANGO_SECRET", "bench-only-secret-key-not-for-deployment-0123456789")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "crm",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "benchsite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = "benchsite.wsgi.application"
ASGI_APPLICATION = "benchsite.asgi.application"

DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ.get("BENCH_DJANGO_DB", ":memory:")},
    "crm": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ.get("BENCH_DB", ":memory:"),
            "OPTIONS": {"timeout": 30}},
}
DATABASE_ROUTERS = ["benchsite.routers.CrmRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

# Signed-cookie sessions, like crmkit's: no session table lookup per request.
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
MESSAGE_STORAGE = "django.contrib.messages.storage.cookie.CookieStorage"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
