"""What Flower is shown of a unit's arguments."""

from __future__ import annotations

from workers.taskview import MAX_SHOWN, _shown


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
