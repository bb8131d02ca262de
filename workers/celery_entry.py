"""Module-level app for ``celery -A workers.celery_entry ...`` (Flower, ad-hoc inspection)."""

from workers.celery_app import get_celery

app = get_celery()
