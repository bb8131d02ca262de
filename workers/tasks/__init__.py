"""Celery tasks: thin adapters from ids to service coroutines on the process loop."""
