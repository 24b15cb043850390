"""The startup heap is frozen by default, and --no-gc-freeze keeps it under the collector; the young
generation is collected less often."""

from __future__ import annotations

import gc
import weakref

from shepherd.cli import build_parser, config_from_args
from shepherd.gc_freeze import YOUNG_THRESHOLD, freeze_startup_heap, raise_young_threshold


def test_freeze_moves_survivors_out_of_the_collectors_reach_and_drops_garbage_first() -> None:
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    survivor = {"kept": [1, 2, 3]}  # a tracked container that outlives the freeze
    garbage = Cycle()
    gone = weakref.ref(garbage)
    del garbage
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 0
        # A full collection no longer sees frozen objects: they are not among the tracked ones.
        tracked = {id(o) for o in gc.get_objects()}
        assert id(survivor) not in tracked
        assert gone() is None  # the cycle was collected before the freeze, not kept forever
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
    assert id(survivor) in {id(o) for o in gc.get_objects()}


def test_freezing_is_on_by_default_and_the_flag_turns_it_off() -> None:
    assert config_from_args(build_parser().parse_args(["launch"])).gc_freeze is True
    assert config_from_args(build_parser().parse_args(["launch", "--no-gc-freeze"])).gc_freeze is False


def test_the_young_threshold_is_raised_and_the_older_ones_kept() -> None:
    before = gc.get_threshold()
    try:
        raise_young_threshold()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])
        assert before[0] < YOUNG_THRESHOLD
    finally:
        gc.set_threshold(*before)
