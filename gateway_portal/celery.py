"""The Celery app. Tasks live in each app's tasks.py; beat schedules in settings."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_portal.settings")

app = Celery("gateway_portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.beat_scheduler = "gateway_portal.beat_lock:SingleBeatScheduler"  # one beat sends
app.autodiscover_tasks()
