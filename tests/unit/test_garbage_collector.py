"""The garbage collector as every actor and replica tunes it: rarer collections, never none."""

from __future__ import annotations

import gc
import weakref

from daygen.runtime import GC_THRESHOLDS, tune_garbage_collector


class Node:
    """An object in a reference cycle with itself: only the garbage collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_the_tuned_collector_still_frees_cyclic_garbage_on_its_own():
    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.isenabled()
        assert gc.get_threshold() == GC_THRESHOLDS
        alive: weakref.WeakSet[Node] = weakref.WeakSet()
        made = 20 * GC_THRESHOLDS[0]
        for _ in range(made):
            alive.add(Node())  # garbage as soon as it is made, but for its cycle
        assert len(alive) < 2 * GC_THRESHOLDS[0], "young collections ran along the way, with no gc.collect()"
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
