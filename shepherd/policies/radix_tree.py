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
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from typing import Any

Key = str | tuple[int, ...]


class Node:
    __slots__ = ("label", "children", "tenants", "parent")

    def __init__(self, label: Any, parent: Node | None) -> None:
        self.label = label
        self.children: dict[Any, Node] = {}
        self.tenants: dict[str, int] = {}
        self.parent = parent


def _common_prefix(key: Any, start: int, label: Any) -> int:
    """How many leading elements of `label` equal key[start:]; the first is known to match."""
    end = min(len(label), len(key) - start)
    if key[start:start + end] == label[:end]:
        return end
    low, high = 1, end - 1  # the answer is in [1, end)
    while low < high:
        mid = (low + high + 1) // 2
        if key[start:start + mid] == label[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


class RadixTree:
    def __init__(self, empty: Key = "") -> None:
        self._empty = empty
        self.root = Node(empty, None)
        self.size = 0  # key elements stored in labels
        self._clock = 0

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    # -- lookups ------------------------------------------------------------------------------

    def match(self, key: Key) -> tuple[int, dict[str, int]]:
        """(length of the longest stored prefix of `key`, tenants holding it -> last access)."""
        node = self.root
        pos = 0
        length = len(key)
        children = node.children
        while pos < length:
            child = children.get(key[pos])
            if child is None:
                break
            label = child.label
            end = pos + len(label)
            if key[pos:end] == label:
                pos = end
                node = child
                children = child.children
                continue
            pos += _common_prefix(key, pos, label)
            node = child
            break
        return pos, node.tenants

    def match_by_tenant(self, key: Key) -> dict[str, int]:
        """For every tenant on `key`'s path, the length of the prefix of `key` it has seen."""
        depth: dict[str, int] = {}
        children = self.root.children
        pos = 0
        length = len(key)
        while pos < length:
            child = children.get(key[pos])
            if child is None:
                break
            label = child.label
            end = pos + len(label)
            full = key[pos:end] == label
            reached = end if full else pos + _common_prefix(key, pos, label)
            for tenant in child.tenants:
                depth[tenant] = reached
            if not full:
                break
            pos = end
            children = child.children
        return depth

    # -- updates ------------------------------------------------------------------------------

    def insert(self, key: Key, tenant: str) -> None:
        """Record that `tenant` has now seen `key` (and so every prefix of it)."""
        now = self._tick()
        node = self.root
        node.tenants[tenant] = now
        pos = 0
        length = len(key)
        while pos < length:
            first = key[pos]
            child = node.children.get(first)
            if child is None:
                leaf = Node(key[pos:], node)
                leaf.tenants[tenant] = now
                node.children[first] = leaf
                self.size += length - pos
                return
            label = child.label
            end = pos + len(label)
            if key[pos:end] == label:
                matched = len(label)
            else:
                matched = _common_prefix(key, pos, label)
                # Split the edge: a new node holds the shared part, the old child the rest.
                middle = Node(label[:matched], node)
                middle.tenants = dict(child.tenants)
                child.label = label[matched:]
                child.parent = middle
                middle.children[child.label[0]] = child
                node.children[first] = middle
                child = middle
            child.tenants[tenant] = now
            node = child
            pos += matched

    def add_tenant(self, tenant: str) -> None:
        """Register a tenant with an empty history (so it exists for lookups that match nothing)."""
        self.root.tenants.setdefault(tenant, self._tick())

    def remove_tenant(self, tenant: str) -> None:
        """Forget every trace of `tenant`."""
        self.root.tenants.pop(tenant, None)
        stack = [self.root]
        while stack:
            node = stack.pop()
            for first, child in list(node.children.items()):
                if child.tenants.pop(tenant, None) is None:
                    continue  # the tenant is on no node below this one
                if not child.tenants:
                    self._detach(node, first, child)
                else:
                    stack.append(child)

    def evict(self, max_size: int, on_evict: Callable[[str, Node], None] | None = None) -> int:
        """Evict least recently used (tenant, leaf) pairs until `size <= max_size`; return how many."""
        if self.size <= max_size:
            return 0
        heap = [(stamp, id(node), node, tenant) for node in self._nodes() for tenant, stamp in node.tenants.items()
                if self._is_tenant_leaf(node, tenant)]
        heapq.heapify(heap)
        evicted = 0
        while self.size > max_size and heap:
            stamp, _, node, tenant = heapq.heappop(heap)
            parent = node.parent
            if parent is None or node.tenants.get(tenant) != stamp or not self._is_tenant_leaf(node, tenant):
                continue  # stale entry: the node moved on since the heap was built
            if on_evict is not None:
                on_evict(tenant, node)
            del node.tenants[tenant]
            evicted += 1
            if not node.tenants:
                self._detach(parent, node.label[0], node)
            if parent is not self.root and tenant in parent.tenants and self._is_tenant_leaf(parent, tenant):
                heapq.heappush(heap, (parent.tenants[tenant], id(parent), parent, tenant))
        return evicted

    # -- helpers ------------------------------------------------------------------------------

    def _detach(self, parent: Node, first: Any, node: Node) -> None:
        """Drop `node` (and anything below it) from the tree."""
        del parent.children[first]
        node.parent = None
        stack = [node]
        while stack:
            current = stack.pop()
            self.size -= len(current.label)
            stack.extend(current.children.values())
            current.children = {}

    @staticmethod
    def _is_tenant_leaf(node: Node, tenant: str) -> bool:
        return not any(tenant in child.tenants for child in node.children.values())

    def _nodes(self) -> Iterator[Node]:
        """Every node but the root."""
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def path(self, node: Node) -> Key:
        """The full key from the root to the end of `node`'s label (for tests and debugging)."""
        parts: list[Sequence[Any]] = []
        while node.parent is not None:
            parts.append(node.label)
            node = node.parent
        if isinstance(self._empty, str):
            return "".join(reversed(parts))  # type: ignore[arg-type]
        return tuple(element for part in reversed(parts) for element in part)

    def tenants(self) -> set[str]:
        return set(self.root.tenants)

    def node_count(self) -> int:
        return sum(1 for _ in self._nodes())
