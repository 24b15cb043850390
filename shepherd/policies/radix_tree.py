"""An approximate radix tree of the prompts each worker has seen.

Keys are strings (characters of the routing text) or tuples of token ids; both are sliced and
compared in C, so a lookup costs one dict probe and one comparison per tree level. Every node keeps,
for each tenant (worker) whose prompts pass through it, the logical time of that tenant's last visit.
Inserting a prompt stamps the tenant on every node of its path, so:

* the tenants of a node are a superset of its children's tenants, and
* the tenants of the deepest node a lookup reaches are exactly the workers holding the longest
  matching prefix.

Memory is bounded by evicting the least recently used (tenant, leaf) pairs: removing a tenant from
a node that none of its children share truncates that tenant's prompts at the node's start; a node
no tenant holds is dropped. `size` counts key elements (characters or tokens) stored in labels.

Layout: nodes are integer ids into a few flat columns (label, children, tenants, parent) rather
than one object each, so a tree of a million nodes adds nothing for a full garbage collection to
walk (a node object per node made a collection of a 150,000-node tree take about 200 ms, during
which the gateway stood still). A node's dicts map strings and ints to ints, which CPython's
collector does not track; the parent column is an `array`; and the column lists themselves are
untracked (see `_untracked`), since walking a list of a million entries costs a cache miss per
entry. Freed ids are reused.
"""

from __future__ import annotations

import ctypes
import heapq
import sys
from array import array
from collections.abc import Callable, Iterator
from typing import Any

Key = str | tuple[int, ...]
ROOT = 0
_DETACHED = -1  # the parent of a node no longer in the tree (its id is free for reuse)


def _common_prefix(key: Any, start: int, label: Any) -> int:
    """How many leading elements of `label` equal key[start:]; the first is known to match.

    Most splits are an element or two in (prompts that differ in a turn number, say), so the first
    few are compared one by one; past those, lengths twice as long each time are compared in C
    until one differs, and the last step is halved down: the cost grows with the log of the common
    part, not of the label (hundreds of characters)."""
    end = min(len(label), len(key) - start)
    low = 1  # key[start:start + low] == label[:low] holds
    while low < end and low < 4:
        if key[start + low] != label[low]:
            return low
        low += 1
    text = type(key) is str
    step = 8
    high = end
    while low < end:
        probe = min(low + step, end)
        if key.startswith(label[low:probe], start + low) if text else \
                key[start + low:start + probe] == label[low:probe]:
            low = probe
            step *= 2
        else:
            high = probe - 1  # the answer is in [low, probe)
            break
    while low < high:
        mid = (low + high + 1) // 2
        if key.startswith(label[low:mid], start + low) if text else key[start + low:start + mid] == label[low:mid]:
            low = mid
        else:
            high = mid - 1
    return low


# The children of every leaf and the columns of every freed node: one shared empty dict, never
# written (insert gives a leaf its own dict with its first child), so that a new leaf allocates one
# dict, not two: allocations are what start the collector's young-generation passes.
_NONE: dict[Any, Any] = {}

_gc_untrack = ctypes.pythonapi.PyObject_GC_UnTrack if sys.implementation.name == "cpython" else None
if _gc_untrack is not None:
    _gc_untrack.argtypes = [ctypes.py_object]
    _gc_untrack.restype = None


def _untracked(items: list[Any]) -> list[Any]:
    """`items`, taken off the garbage collector's list (CPython's public PyObject_GC_UnTrack).

    Only for lists that can never be part of a reference cycle: these columns hold strings,
    tuples of ints, ints, and dicts of those, none of which can refer back to a list. It is
    what the interpreter does on its own for dicts and tuples of such values; for a list it must
    be asked. Deallocation untracks again, which the C API allows."""
    if _gc_untrack is not None:
        _gc_untrack(items)
    return items


class RadixTree:
    def __init__(self, empty: Key = "") -> None:
        self._empty = empty
        # Node columns, indexed by node id; the root is id 0.
        self._labels: list[Any] = _untracked([empty])
        self._children: list[dict[Any, int]] = _untracked([{}])  # first key element -> child id
        self._tenants: list[dict[str, int]] = _untracked([{}])  # tenant -> logical time of its last visit
        self._parent = array("q", [_DETACHED])
        self._free: list[int] = _untracked([])
        self.size = 0  # key elements stored in labels
        self._clock = 0

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _new(self, label: Any, parent: int, children: dict[Any, int], tenants: dict[str, int]) -> int:
        if self._free:
            node = self._free.pop()
            self._labels[node] = label
            self._children[node] = children
            self._tenants[node] = tenants
            self._parent[node] = parent
            return node
        self._labels.append(label)
        self._children.append(children)
        self._tenants.append(tenants)
        self._parent.append(parent)
        return len(self._labels) - 1

    # -- lookups ------------------------------------------------------------------------------

    def match(self, key: Key, path: list[int] | None = None) -> tuple[int, dict[str, int]]:
        """(length of the longest stored prefix of `key`, tenants holding it -> last access).

        With `path`, the nodes whose whole label `key` matched are appended to it, in order, so
        that `insert(key, tenant, path)` right after (with no change to the tree in between) need
        not walk them again."""
        labels, all_children = self._labels, self._children
        node = ROOT
        pos = 0
        length = len(key)
        text = type(key) is str
        children = all_children[ROOT]
        while pos < length:
            child = children.get(key[pos])
            if child is None:
                break
            label = labels[child]
            end = pos + len(label)
            if key.startswith(label, pos) if text else key[pos:end] == label:  # type: ignore[union-attr, arg-type]
                pos = end
                node = child
                if path is not None:
                    path.append(child)
                children = all_children[child]
                continue
            pos += _common_prefix(key, pos, label)
            node = child
            break
        return pos, self._tenants[node]

    def match_by_tenant(self, key: Key) -> dict[str, int]:
        """For every tenant on `key`'s path, the length of the prefix of `key` it has seen."""
        labels, all_children, all_tenants = self._labels, self._children, self._tenants
        depth: dict[str, int] = {}
        children = all_children[ROOT]
        pos = 0
        length = len(key)
        while pos < length:
            child = children.get(key[pos])
            if child is None:
                break
            label = labels[child]
            end = pos + len(label)
            full = key[pos:end] == label
            reached = end if full else pos + _common_prefix(key, pos, label)
            for tenant in all_tenants[child]:
                depth[tenant] = reached
            if not full:
                break
            pos = end
            children = all_children[child]
        return depth

    # -- updates ------------------------------------------------------------------------------

    def insert(self, key: Key, tenant: str, path: list[int] | None = None) -> None:
        """Record that `tenant` has now seen `key` (and so every prefix of it). `path`: what
        `match(key, path)` just found (see there)."""
        now = self._tick()
        labels, all_children, all_tenants = self._labels, self._children, self._tenants
        node = ROOT
        all_tenants[ROOT][tenant] = now
        pos = 0
        if path:
            for node in path:
                all_tenants[node][tenant] = now
                pos += len(labels[node])
        length = len(key)
        text = type(key) is str
        while pos < length:
            first = key[pos]
            children = all_children[node]
            child = children.get(first)
            if child is None:
                if children is _NONE:  # the first child of a leaf
                    children = all_children[node] = {}
                children[first] = self._new(key[pos:], node, _NONE, {tenant: now})
                self.size += length - pos
                return
            label = labels[child]
            end = pos + len(label)
            if key.startswith(label, pos) if text else key[pos:end] == label:  # type: ignore[union-attr, arg-type]
                matched = len(label)
            else:
                matched = _common_prefix(key, pos, label)
                # Split the edge: a new node holds the shared part, the old child the rest.
                rest = label[matched:]
                middle = self._new(label[:matched], node, {rest[0]: child}, dict(all_tenants[child]))
                labels[child] = rest
                self._parent[child] = middle
                children[first] = middle
                child = middle
            self._tenants[child][tenant] = now
            node = child
            pos += matched

    def add_tenant(self, tenant: str) -> None:
        """Register a tenant with an empty history (so it exists for lookups that match nothing)."""
        self._tenants[ROOT].setdefault(tenant, self._tick())

    def remove_tenant(self, tenant: str) -> None:
        """Forget every trace of `tenant`."""
        all_children, all_tenants = self._children, self._tenants
        all_tenants[ROOT].pop(tenant, None)
        stack = [ROOT]
        while stack:
            node = stack.pop()
            for first, child in list(all_children[node].items()):
                tenants = all_tenants[child]
                if tenants.pop(tenant, None) is None:
                    continue  # the tenant is on no node below this one
                if not tenants:
                    self._detach(node, first, child)
                else:
                    stack.append(child)

    def evict(self, max_size: int, on_evict: Callable[[str, int], None] | None = None) -> int:
        """Evict least recently used (tenant, leaf) pairs until `size <= max_size`; return how many.
        `on_evict(tenant, node)` is told each pair before it goes (the node still readable)."""
        if self.size <= max_size:
            return 0
        all_tenants, parents = self._tenants, self._parent
        heap = [(stamp, node, tenant) for node in self._nodes() for tenant, stamp in all_tenants[node].items()
                if self._is_tenant_leaf(node, tenant)]
        heapq.heapify(heap)
        evicted = 0
        while self.size > max_size and heap:
            stamp, node, tenant = heapq.heappop(heap)
            parent = parents[node]
            tenants = all_tenants[node]
            if parent == _DETACHED or tenants.get(tenant) != stamp or not self._is_tenant_leaf(node, tenant):
                continue  # stale entry: the node moved on since the heap was built
            if on_evict is not None:
                on_evict(tenant, node)
            del tenants[tenant]
            evicted += 1
            if not tenants:
                self._detach(parent, self._labels[node][0], node)
            above = all_tenants[parent]
            if parent != ROOT and tenant in above and self._is_tenant_leaf(parent, tenant):
                heapq.heappush(heap, (above[tenant], parent, tenant))
        return evicted

    # -- helpers ------------------------------------------------------------------------------

    def _detach(self, parent: int, first: Any, node: int) -> None:
        """Drop `node` (and anything below it) from the tree; their ids become free."""
        del self._children[parent][first]
        stack = [node]
        while stack:
            current = stack.pop()
            self.size -= len(self._labels[current])
            stack.extend(self._children[current].values())
            self._labels[current] = self._empty
            self._children[current] = _NONE
            self._tenants[current] = _NONE
            self._parent[current] = _DETACHED
            self._free.append(current)

    def _is_tenant_leaf(self, node: int, tenant: str) -> bool:
        all_tenants = self._tenants
        return not any(tenant in all_tenants[child] for child in self._children[node].values())

    def _nodes(self) -> Iterator[int]:
        """Every node in the tree but the root."""
        stack = list(self._children[ROOT].values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(self._children[node].values())

    # -- reading nodes (tests, debugging, eviction callbacks) ----------------------------------

    def label(self, node: int) -> Key:
        return self._labels[node]  # type: ignore[no-any-return]

    def node_tenants(self, node: int) -> dict[str, int]:
        return self._tenants[node]

    def parent(self, node: int) -> int | None:
        parent = self._parent[node]
        return None if parent == _DETACHED else parent

    def path(self, node: int) -> Key:
        """The full key from the root to the end of `node`'s label."""
        parts: list[Any] = []
        while node != ROOT:
            parts.append(self._labels[node])
            node = self._parent[node]
        if isinstance(self._empty, str):
            return "".join(reversed(parts))
        return tuple(element for part in reversed(parts) for element in part)

    @property
    def node_count(self) -> int:
        """Nodes in the tree, the root included."""
        return len(self._labels) - len(self._free)

    def tenants(self) -> set[str]:
        return set(self._tenants[ROOT])
