"""A counter that moves whenever any worker's availability may have changed.

A worker is available when its status is READY, its breaker lets traffic through and it is neither
stalled nor wedged (liveness.py). Writes to a worker's `status`, `breaker` or `liveness`, every
breaker state change and every stall/wedge change move the counter, so a caller that
found a set of workers all available at one value knows they still are while it stands (a closed
breaker stays closed until it moves). Selection uses it to skip walking 256 workers' availability
on every request; a spurious move only costs one walk.
"""

from __future__ import annotations

_epoch = 0


def epoch() -> int:
    return _epoch


def changed() -> None:
    global _epoch
    _epoch += 1
