"""Celery processes: app, per-process asyncio runtime, beat and tasks."""
