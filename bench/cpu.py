"""CPU time of a process and all its descendants, from /proc (Linux), for per-request costs.

Descendants count so a gateway that forks workers (or helper processes) is charged for all of
them; a child that exits between two readings takes its time with it, so read while it runs.
"""

from __future__ import annotations

import os

_TICKS = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found.extend(int(child) for child in handle.read().split())
    except OSError:
        pass
    return found


def _own_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15 of stat)


def tree_cpu_seconds(pid: int) -> float:
    """User + system seconds used so far by `pid` and every process below it."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        total += _own_seconds(current)
        pending.extend(_children(current))
    return total
