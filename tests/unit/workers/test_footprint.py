"""The workers' import graph: what every worker process carries in memory.

Beat claims rows and sends messages: it loads none of the polling and delivery code.
The workers reach PostgreSQL through asyncpg only; SQLModel and SQLAlchemy (the API's
ORM) would add about 25 MB of resident memory to each worker process, which the
40,000-instance budget (all processes together within 600 MB) cannot spare; nor can the
API carry psycopg.
"""

from __future__ import annotations

import subprocess
import sys

from app.settings import Settings
from workers.celery_app import create_celery

_PROBE = """
import sys
import app.cli, workers.worker, workers.runtime, workers.taskview
for name in {modules!r}:
    __import__(name)
print(",".join(sorted(m for m in ("sqlalchemy", "sqlmodel", "app.models") if m in sys.modules)))
"""


def test_a_worker_process_never_loads_the_orm() -> None:
    settings = Settings(broker_url="redis://127.0.0.1:1/0")  # never connects
    modules = create_celery(settings).conf.imports  # every task module a worker imports
    assert "workers.tasks.poll" in modules
    probe = _PROBE.format(modules=list(modules))
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == ""


_BEAT_PROBE = """
import sys
from app.settings import Settings
import workers.beat
from workers.celery_app import create_celery
app = create_celery(Settings(broker_url="redis://127.0.0.1:1/0"), tasks=False)
app.loader.init_worker()  # what `celery beat` does at start
print(",".join(sorted(m for m in ("aiohttp", "asyncpg", "workers.tasks.poll") if m in sys.modules)))
"""


def test_beat_never_loads_the_task_modules() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", _BEAT_PROBE], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == ""


def test_the_api_never_loads_psycopg() -> None:
    """The API reaches PostgreSQL through asyncpg; psycopg's driver (beat's, the CLI's) would
    add about 10 MB to its RSS. Poll-now notifies beat through the API's own session."""
    probe = "import sys, app.api.server; print('psycopg' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "False"
