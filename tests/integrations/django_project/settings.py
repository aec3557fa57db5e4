"""Settings of the test project: keybrake's URL and token come from the environment.

``MARKERS`` (a folder) is where views note that they ran, and where the streaming views
wait for a ``go`` file before their last chunk.
"""

import os

SECRET_KEY = "keybrake-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
ROOT_URLCONF = "tests.integrations.django_project.urls"
USE_TZ = True
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "keybrake.integrations.django.VaultKeyMiddleware",
]
ENDPOINTS = ["/v1/payment_intents", "/v1/payment_intents/*"]
KEYBRAKE_VAULT_KEYS = [
    {"path_prefix": "/tools/", "vendor": "stripe", "endpoints": ENDPOINTS, "cap": 50, "ttl": "1m"},
    {
        "path_prefix": "/tools/special/",
        "vendor": "stripe",
        "endpoints": ["POST /v1/payment_intents"],
        "cap": 7,
        "ttl": "2m",
        "label": "special",
        "metadata": {"team": "payments"},
    },
]
MARKERS = os.environ["MARKERS"]
LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"keybrake": {"handlers": ["console"], "level": "WARNING"}},
}
