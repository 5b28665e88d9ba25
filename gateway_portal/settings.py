"""Tollgate settings: one module, read from the environment with django-environ.

Production differs from development only by environment variables (see `.env.example`).
"""

import secrets
from pathlib import Path

import environ

from gateway_portal.data_regions import parse_regions

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"
VAR_DIR.mkdir(exist_ok=True)

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# --- Core ------------------------------------------------------------------
DEBUG = env.bool("DEBUG", default=False)


def _demo_secret_key() -> str:
    """Demo mode keeps a generated key in var/ so sessions survive restarts."""
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise environ.ImproperlyConfigured("SECRET_KEY is required when DEBUG is off")
    SECRET_KEY = _demo_secret_key()

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "ninja",
    "apps.accounts",
    "apps.proxy",
    "apps.usage",
    "apps.quotas",
    "apps.billing",
    "apps.dashboards",
    "apps.outbound",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "gateway_portal.security.content_security_policy",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "apps.usage.region_reads.RegionReadsMiddleware",
]

ROOT_URLCONF = "gateway_portal.urls"
ASGI_APPLICATION = "gateway_portal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.accounts.context_processors.portal_nav",
            ],
        },
    },
]

# --- Database ----------------------------------------------------------------
DATABASE_URL = env.str("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")


def _database(url: str) -> dict:
    config = env.db_url_config(url)
    config.setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=0))
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # WAL lets the usage writer and the portal share the file without "database is locked".
        config.setdefault("OPTIONS", {}).update(
            {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}
        )
        # A file, not Django's default in-memory test database, so that a gateway started by
        # a test in another process sees the same rows.
        config.setdefault("TEST", {})["NAME"] = str(
            Path(config["NAME"]).with_suffix(".test.sqlite3")
        )
    if config["ENGINE"] == "django.db.backends.postgresql":
        # Fail fast when the database is away, so the proxy falls back instead of hanging.
        config.setdefault("OPTIONS", {}).setdefault("connect_timeout", 3)
    return config


DATABASES = {"default": _database(DATABASE_URL)}

# --- Data regions: where each tenant's usage, tags and bodies are kept -----------------
# gateway_portal/data_regions.py explains the three variables. Each region with a database
# of its own is a database alias; apps/usage/regions.py routes the ledger's models to it.
# The demo (DEBUG with no DATABASE_URL: `make run`) shows two: the US region is kept in its
# own database, the EU region in a second SQLite file.
_DEMO_REGIONS = (
    f"us={DATABASE_URL},eu=sqlite:///{VAR_DIR / 'region-eu.sqlite3'}"
    if DEBUG and not env.str("DATABASE_URL", default="")
    else ""
)
DATA_REGIONS, DATA_REGION_DEFAULT = parse_regions(
    env.str("DATA_REGIONS", default=_DEMO_REGIONS),
    default=env.str("DATA_REGION_DEFAULT", default=""),
    strict=env.str("DATA_REGIONS_STRICT", default=""),
    primary_url=DATABASE_URL,
)
for _region in DATA_REGIONS:
    if _region.url:
        DATABASES[_region.alias] = _database(_region.url)
DATABASE_ROUTERS = ["apps.usage.regions.RegionRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, cache and Celery ---------------------------------------------------
# Unset REDIS_URL is the embedded mode: in-process counters, caches and buffers.
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="")
# With no broker, tasks run eagerly in the process that queues them. The embedded web process
# relies on it: its quota counters live in its own memory, so the counter seed it queues after
# a tier or rule change must run there, not in a worker.
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
# `filesystem://` is kombu's folder transport, which `make run` (scripts/run_demo.py) gives the
# demo's worker and beat so the schedule runs without Redis. A message is a file; producers
# write to the folder the worker reads, so in and out are the same folder. Nothing reads
# results on it.
FILESYSTEM_BROKER_DIR = Path(env.str("FILESYSTEM_BROKER_DIR", default=str(VAR_DIR / "celery")))
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(FILESYSTEM_BROKER_DIR / "messages"),
        "data_folder_out": str(FILESYSTEM_BROKER_DIR / "messages"),
        "control_folder": str(FILESYSTEM_BROKER_DIR / "control"),
    }
    CELERY_TASK_IGNORE_RESULT = True
    # kombu writes into these folders but never creates them.
    for _folder in ("messages", "control"):
        (FILESYSTEM_BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
# TTL of the lease of the one beat that sends the schedule (gateway_portal/beat_lock.py).
BEAT_LOCK_TTL_SECONDS = env.float("BEAT_LOCK_TTL_SECONDS", default=30.0)
# Every beat schedule, in this one block. Each task is idempotent, so overlaps are safe.
CELERY_BEAT_SCHEDULE: dict = {
    # Key lifecycle (apps/accounts/tasks.py).
    "accounts.rotate_due_keys": {"task": "accounts.rotate_due_keys", "schedule": 15 * 60.0},
    "accounts.retire_expired_keys": {"task": "accounts.retire_expired_keys", "schedule": 5 * 60.0},
    "accounts.warn_expiring_keys": {"task": "accounts.warn_expiring_keys", "schedule": 60 * 60.0},
    # The one rollup of the usage ledger (apps/usage/tasks.py): the daily tables, today's
    # hourly tables and this month's statements, incrementally (each run rolls only what is
    # not final yet), so it runs every few minutes.
    "usage.rollups_refresh": {
        "task": "usage.rollups_refresh",
        "schedule": env.float("USAGE_ROLLUP_INTERVAL_SECONDS", default=5 * 60.0),
    },
    # The raw usage table's coming monthly partitions (PostgreSQL), then retention: raw rows
    # and logged bodies past their days (apps/usage/partitions.py, apps/usage/retention.py).
    "usage.partitions_maintain": {"task": "usage.partitions_maintain", "schedule": 6 * 3600.0},
    "usage.retention_prune": {"task": "usage.retention_prune", "schedule": 24 * 3600.0},
    # Region moves: finish interrupted ones, move rows that landed in an old region after one
    # (apps/usage/region_move.py).
    "usage.region_moves_sweep": {"task": "usage.region_moves_sweep", "schedule": 5 * 60.0},
}
# A region move untouched this long is no longer running: the sweep finishes it. For this
# many hours after a move, the sweep moves the team's rows that still landed in an old region.
USAGE_REGION_MOVE_IDLE_SECONDS = env.int("USAGE_REGION_MOVE_IDLE_SECONDS", default=600)
USAGE_REGION_MOVE_SWEEP_HOURS = env.int("USAGE_REGION_MOVE_SWEEP_HOURS", default=24)
# Complete days each rollup run re-rolls for the dashboards (late usage rows land within them).
USAGE_ROLLUP_RECENT_DAYS = env.int("USAGE_ROLLUP_RECENT_DAYS", default=2)
# Raw usage rows go a whole UTC month at a time once its last day is this old (0: kept);
# rollups, statements and dashboards stay. At least 62, and finance needs a year plus.
USAGE_RAW_RETENTION_DAYS = env.int("USAGE_RAW_RETENTION_DAYS", default=400)
# Logged request and response bodies are set to NULL after this many days (0: kept).
USAGE_BODY_RETENTION_DAYS = env.int("USAGE_BODY_RETENTION_DAYS", default=30)
# Monthly partitions kept created ahead of this month (PostgreSQL).
USAGE_PARTITIONS_AHEAD_MONTHS = env.int("USAGE_PARTITIONS_AHEAD_MONTHS", default=3)

# --- Auth and portal -----------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=False)
# Sent on every portal page; each directive's reason is in the README ("Page security policy").
CONTENT_SECURITY_POLICY = env.str(
    "CONTENT_SECURITY_POLICY",
    default="default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; "
    "form-action 'self'; object-src 'none'",
)

REST_FRAMEWORK = {
    # DRF tokens (`manage.py drf_create_token USER`) for scripts and runbooks, the session
    # for the portal's own calls. Token first so a bad or missing token answers 401.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "rest_framework.schemas.openapi.AutoSchema",
}

EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="tollgate@localhost")

# --- Internationalisation and static files ------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

# --- Gateway --------------------------------------------------------------------
# Display prefix of issued keys: "tg_live_" followed by random characters.
API_KEY_PREFIX = env.str("API_KEY_PREFIX", default="tg_live_")
# Seconds a verified key stays in a worker's in-process cache before it is re-read.
KEY_CACHE_TTL = env.float("KEY_CACHE_TTL", default=30.0)
# Seconds between an embedded-mode worker's reads of the key change log (no Redis pub/sub).
KEY_CHANGE_POLL_SECONDS = env.float("KEY_CHANGE_POLL_SECONDS", default=0.5)
# Seconds a verified key stays in the Redis key mirror, read only while the database is down
# (a worker started during an outage admits the keys it holds; see apps/proxy/key_mirror.py).
KEY_MIRROR_TTL = env.int("KEY_MIRROR_TTL", default=86_400)

# --- Key lifecycle --------------------------------------------------------------------
# Pub/sub channel on which revocations and key edits reach every gateway worker.
KEY_EVENTS_CHANNEL = env.str("KEY_EVENTS_CHANNEL", default="tollgate:key-events")
# Seconds between batched writes of keys' last-used times (one UPDATE per key used).
LAST_USED_FLUSH_SECONDS = env.float("LAST_USED_FLUSH_SECONDS", default=30.0)
# Owners are emailed this many days before a key expires (once per key).
KEY_EXPIRY_WARNING_DAYS = env.int("KEY_EXPIRY_WARNING_DAYS", default=7)

# --- Demo -----------------------------------------------------------------------------
# `seed_demo` writes this much synthetic usage history when the database has little usage.
DEMO_USAGE_ROWS = env.int("DEMO_USAGE_ROWS", default=20_000)

# --- Logging ----------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Proxy (/v1) -------------------------------------------------------------------
PROXY_MAX_BODY_BYTES = env.int("PROXY_MAX_BODY_BYTES", default=10 * 1024 * 1024)
# Deployments tried per request (the first plus failovers) and the backoff between them.
PROXY_MAX_ATTEMPTS = env.int("PROXY_MAX_ATTEMPTS", default=3)
PROXY_RETRY_BACKOFF = env.float("PROXY_RETRY_BACKOFF", default=0.05)
# Adds `usage.cost` (USD) to whole answers and to the usage the gateway writes at a stream's
# end; off by default, since strict clients may refuse an unknown usage field.
PROXY_COST_IN_USAGE = env.bool("PROXY_COST_IN_USAGE", default=False)
# Freeze the objects alive after start-up out of the garbage collector's way (see asgi.py).
GC_FREEZE_AT_STARTUP = env.bool("GC_FREEZE_AT_STARTUP", default=True)
UPSTREAM_CONNECT_TIMEOUT = env.float("UPSTREAM_CONNECT_TIMEOUT", default=5.0)
UPSTREAM_POOL_LIMIT = env.int("UPSTREAM_POOL_LIMIT", default=1000)
UPSTREAM_POOL_LIMIT_PER_HOST = env.int("UPSTREAM_POOL_LIMIT_PER_HOST", default=0)
CATALOG_REFRESH_SECONDS = env.float("CATALOG_REFRESH_SECONDS", default=2.0)
# Where upstreams may be (apps/outbound, README "Outbound URLs"): host names (`*.` wildcards)
# that must resolve to public addresses, IP networks (CIDR or one address) allowed even when
# private, `*` for any public host. Checked on the resolved address at connect time; an empty
# list allows nothing. No loopback or private range by default: Redis and PostgreSQL live
# there. The demo (DEBUG) adds the one address its simulator listens on (SIMULATOR_BASE_URL).
UPSTREAM_ALLOWED_HOSTS = env.list(
    "UPSTREAM_ALLOWED_HOSTS",
    default=[
        "api.openai.com",
        "*.openai.azure.com",
        "api.anthropic.com",
        "api.cohere.com",
        "api.cohere.ai",
        "api.groq.com",
        "api.together.xyz",
        "api.deepseek.com",
        "api.mistral.ai",
        "api.jina.ai",
        "api.voyageai.com",
    ]
    + (["127.0.0.1"] if DEBUG else []),
)
# A deployment's `api_key_env` may name only variables with one of these prefixes or in this
# list, and never one this module reads (DATABASE_URL, SECRET_KEY, ...): apps/proxy/crypto.py.
UPSTREAM_API_KEY_ENV_PREFIXES = env.list(
    "UPSTREAM_API_KEY_ENV_PREFIXES", default=["TOLLGATE_UPSTREAM_"]
)
UPSTREAM_API_KEY_ENV_NAMES = env.list("UPSTREAM_API_KEY_ENV_NAMES", default=[])
# Key for encrypting upstream provider secrets at rest (defaults to one derived from SECRET_KEY).
UPSTREAM_SECRET_KEY = env.str("UPSTREAM_SECRET_KEY", default="")
# The simulator is served at /simulator on the gateway itself (turn off in production).
SIMULATOR_MOUNTED = env.bool("SIMULATOR_MOUNTED", default=True)
# Where `make run`'s demo models reach the built-in simulator.
SIMULATOR_BASE_URL = env.str(
    "SIMULATOR_BASE_URL", default=f"http://127.0.0.1:{env.int('PORT', default=8000)}/simulator/v1"
)

# --- Quotas ----------------------------------------------------------------------------
QUOTA_REFRESH_SECONDS = env.float("QUOTA_REFRESH_SECONDS", default=1.0)
# Seconds before the reservation of a request that never settled is released.
QUOTA_RESERVATION_TTL = env.int("QUOTA_RESERVATION_TTL", default=600)
# Worst-case output tokens reserved when a request sets no max_tokens.
QUOTA_DEFAULT_MAX_OUTPUT_TOKENS = env.int("QUOTA_DEFAULT_MAX_OUTPUT_TOKENS", default=4096)
# Async callables returning (stamp, rules) merged over the YAML rules: hard-capped tiers.
QUOTA_GENERATED_RULE_SOURCES = ["apps.billing.quota_rules.atier_quota_state"]

# --- Usage capture -------------------------------------------------------------------
USAGE_STREAM = env.str("USAGE_STREAM", default="tollgate:usage")
USAGE_SPOOL_DIR = env.path("USAGE_SPOOL_DIR", default=VAR_DIR / "spool")
USAGE_BATCH_SIZE = env.int("USAGE_BATCH_SIZE", default=500)
USAGE_FLUSH_INTERVAL = env.float("USAGE_FLUSH_INTERVAL", default=1.0)
USAGE_CLAIM_IDLE_MS = env.int("USAGE_CLAIM_IDLE_MS", default=30_000)
# Each gateway process drains the buffer itself; with Redis, a separate
# `manage.py usage_writer` process can do it instead, keeping batch inserts (CPU and GIL
# time) off the processes that serve /v1.
USAGE_WRITER_IN_PROCESS = env.bool("USAGE_WRITER_IN_PROCESS", default=True)

# --- Billing -------------------------------------------------------------------------
# Tag keys whose values the rollups keep as dimensions; the customer tag is always added.
BILLING_ROLLUP_TAG_KEYS = env.list(
    "BILLING_ROLLUP_TAG_KEYS", default=["customer_id", "feature", "environment"]
)
# The tag whose value identifies a customer subscription (subject type "customer").
BILLING_CUSTOMER_TAG_KEY = env.str("BILLING_CUSTOMER_TAG_KEY", default="customer_id")
# Incremental exports only hand out rows inserted at least this long ago, so a row whose
# writer transaction commits late cannot land behind a watermark already handed out.
BILLING_EXPORT_SETTLE_SECONDS = env.int("BILLING_EXPORT_SETTLE_SECONDS", default=120)


# --- Routing and health --------------------------------------------------------------
# Smoothing of the latency EWMAs the `latency` strategy routes by (weight of a new sample).
ROUTING_EWMA_ALPHA = env.float("ROUTING_EWMA_ALPHA", default=0.3)
# Share of `latency`-routed requests sent to a random deployment, so a recovered one is seen.
ROUTING_EXPLORATION_SHARE = env.float("ROUTING_EXPLORATION_SHARE", default=0.05)
# Default time-to-first-token limit of streams (0: none); a deployment's
# `ttft_timeout_seconds` overrides it. Past it the stream is abandoned for the next deployment.
ROUTING_TTFT_TIMEOUT_SECONDS = env.float("ROUTING_TTFT_TIMEOUT_SECONDS", default=0.0)
# Circuit breaker: this many failures within the window cool a deployment for the cooldown.
HEALTH_BREAKER_FAILURES = env.int("HEALTH_BREAKER_FAILURES", default=5)
HEALTH_BREAKER_WINDOW_SECONDS = env.float("HEALTH_BREAKER_WINDOW_SECONDS", default=30.0)
HEALTH_BREAKER_COOLDOWN_SECONDS = env.float("HEALTH_BREAKER_COOLDOWN_SECONDS", default=30.0)
# An upstream 429's retry-after cools a deployment that long, at most this.
HEALTH_BREAKER_MAX_RETRY_AFTER = env.float("HEALTH_BREAKER_MAX_RETRY_AFTER", default=300.0)
# Workers share latency and breaker state through Redis this often (off the request path);
# the shared state outlives a worker by the TTL.
HEALTH_SYNC_SECONDS = env.float("HEALTH_SYNC_SECONDS", default=0.5)
HEALTH_STATE_TTL_SECONDS = env.float("HEALTH_STATE_TTL_SECONDS", default=600.0)
HEALTH_STATS_WINDOW_SECONDS = env.float("HEALTH_STATS_WINDOW_SECONDS", default=60.0)
HEALTH_REDIS_PREFIX = env.str("HEALTH_REDIS_PREFIX", default="tollgate:health")
# GET /metrics: the bearer token, from every address, when one is set (loopback is no proof:
# a DNS-rebinding page or a reverse proxy on the same host looks local); without a token,
# clients from these networks (loopback by default).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOWED_NETWORKS = env.list("METRICS_ALLOWED_NETWORKS", default=["127.0.0.0/8", "::1/128"])
# Tag keys whose values become metric labels, each capped at so many distinct values.
METRICS_TAG_KEYS = env.list("METRICS_TAG_KEYS", default=[])
METRICS_TAG_VALUES_MAX = env.int("METRICS_TAG_VALUES_MAX", default=50)
# Multi-worker metrics: prometheus-client's multiprocess directory, emptied before start.
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default="")
if PROMETHEUS_MULTIPROC_DIR:
    Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)
