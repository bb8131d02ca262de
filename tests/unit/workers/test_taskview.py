"""What Flower is shown of a unit's arguments."""

from __future__ import annotations

import uuid

from celery import Celery

from workers.taskview import MAX_SHOWN, TaskView, _shown


def test_arguments_are_shown_as_python_would_print_them() -> None:
    assert _shown([41]) == "[41]"
    assert _shown({"scheduled": None, "resources": "contacts,orders"}) == (
        "{'scheduled': None, 'resources': 'contacts,orders'}"
    )


def test_an_instance_with_many_long_resource_names_is_cut_short() -> None:
    shown = _shown({"resources": ",".join(f"r{i:03d}" + "x" * 96 for i in range(50))})
    assert len(shown) == MAX_SHOWN
    assert shown.startswith("{'resources': 'r000x")
    assert shown.endswith("...")


def test_task_ids_are_uuid_shaped_and_unique_per_view() -> None:
    app = Celery("ids", broker="memory://", set_as_current=False)
    first, second = TaskView(app, "a@host"), TaskView(app, "b@host")
    ids = [first._next_id() for _ in range(1000)] + [second._next_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    assert all(str(uuid.UUID(i)) == i for i in ids)
    app.close()
