"""The collector settings of the long-running processes (:mod:`app.gctune`)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from app.gctune import YOUNG_THRESHOLD, freeze_startup, tune_gc


@pytest.fixture(autouse=True)
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_tune_gc_freezes_what_exists_and_raises_the_young_threshold() -> None:
    older = gc.get_threshold()[1:]
    tune_gc()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (YOUNG_THRESHOLD, *older)


def test_freeze_startup_leaves_the_thresholds_alone() -> None:
    threshold = gc.get_threshold()
    freeze_startup()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == threshold


def test_cycles_made_after_tuning_are_still_collected() -> None:
    tune_gc()

    class Node:
        other: object = None

    collected: list[bool] = []
    a, b = Node(), Node()
    a.other, b.other = b, a
    weakref.finalize(a, collected.append, True)
    del a, b
    gc.collect()
    assert collected == [True]
