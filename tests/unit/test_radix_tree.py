"""The radix tree agrees with a brute-force model of what each tenant has seen."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shepherd.policies.radix_tree import ROOT, RadixTree, _common_prefix


def lcp(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Model:
    """Per tenant, the set of strings it holds (eviction truncates them, exactly as the tree reports)."""

    def __init__(self) -> None:
        self.strings: dict[str, set[str]] = {}

    def insert(self, key: str, tenant: str) -> None:
        self.strings.setdefault(tenant, {""}).add(key)

    def match(self, key: str) -> tuple[int, set[str]]:
        best = max((lcp(key, s) for held in self.strings.values() for s in held), default=0)
        holders = {t for t, held in self.strings.items() if any(lcp(key, s) == best for s in held)}
        return best, holders

    def truncate(self, tenant: str, start: int, path: str) -> None:
        self.strings[tenant] = {s[:start] if lcp(s, path) > start else s for s in self.strings[tenant]}

    def remove(self, tenant: str) -> None:
        self.strings.pop(tenant, None)


def check(tree: RadixTree, model: Model, queries: list[str]) -> None:
    for query in queries:
        matched, holders = tree.match(query)
        expected_len, expected_holders = model.match(query)
        assert matched == expected_len, query
        assert set(holders) == expected_holders, query
    assert tree.size == sum(len(tree.label(n)) for n in tree._nodes())
    for node in tree._nodes():  # children's tenants are a subset of the parent's
        parent = tree.parent(node)
        assert parent is not None
        assert set(tree.node_tenants(node)) <= set(tree.node_tenants(parent)) and tree.node_tenants(node)


ALPHABET = "abc"
keys = st.text(alphabet=ALPHABET, min_size=0, max_size=12)
tenants = st.sampled_from(["w1", "w2", "w3"])
operations = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), keys, tenants),
        st.tuples(st.just("evict"), st.integers(min_value=0, max_value=30), st.just("")),
        st.tuples(st.just("remove"), st.just(""), tenants),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(operations, st.lists(keys, min_size=1, max_size=10))
def test_tree_agrees_with_brute_force(ops: list[tuple[str, object, str]], queries: list[str]) -> None:
    tree = RadixTree("")
    model = Model()
    for op, argument, tenant in ops:
        if op == "insert":
            assert isinstance(argument, str)
            tree.insert(argument, tenant)
            model.insert(argument, tenant)
        elif op == "evict":
            assert isinstance(argument, int)

            def on_evict(evicted_tenant: str, node: int) -> None:
                path = tree.path(node)
                assert isinstance(path, str)
                model.truncate(evicted_tenant, len(path) - len(tree.label(node)), path)

            tree.evict(argument, on_evict)
            assert tree.size <= argument  # memory stays under the bound
        else:
            tree.remove_tenant(tenant)
            model.remove(tenant)
            assert all(tenant not in tree.node_tenants(node) for node in tree._nodes())
            assert tenant not in tree.node_tenants(ROOT)
        check(tree, model, queries)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 3), max_size=8).map(tuple), tenants), max_size=20))
def test_token_keys_work_like_strings(entries: list[tuple[tuple[int, ...], str]]) -> None:
    tokens = RadixTree(())
    text = RadixTree("")
    for key, tenant in entries:
        tokens.insert(key, tenant)
        text.insert("".join(map(str, key)), tenant)
    for key, _ in entries:
        matched_tokens, holders_tokens = tokens.match(key)
        matched_text, holders_text = text.match("".join(map(str, key)))
        assert matched_tokens == matched_text and set(holders_tokens) == set(holders_text)


def test_eviction_is_least_recently_used_first() -> None:
    tree = RadixTree("")
    tree.insert("old prompt about cats", "w1")
    tree.insert("new prompt about dogs", "w2")
    tree.insert("new prompt about dogs", "w2")  # touched again
    tree.evict(tree.size - 1)
    assert tree.match("old prompt about cats")[0] < len("old prompt about cats")
    assert tree.match("new prompt about dogs")[0] == len("new prompt about dogs")


def test_removed_tenant_leaves_no_trace_in_a_large_tree() -> None:
    tree = RadixTree("")
    for i in range(2000):
        tree.insert(f"system prompt {i % 7} user question {i}", f"w{i % 4}")
    size_before = tree.size
    tree.remove_tenant("w2")
    assert all("w2" not in tree.node_tenants(node) for node in tree._nodes())
    assert tree.size < size_before
    assert "w2" not in tree.match("system prompt 3 user question 10")[1]


def test_freed_nodes_are_reused_and_the_tree_adds_no_tracked_objects() -> None:
    """Evicted nodes' ids go back into use; node columns hold nothing the garbage collector tracks."""
    import gc

    tree = RadixTree("")
    for i in range(500):
        tree.insert(f"prompt {i} about {i * 7}", f"w{i % 3}")
    peak = len(tree._labels)
    tree.evict(0)
    assert tree.size == 0 and tree.node_count == 1
    for i in range(500):
        tree.insert(f"prompt {i} about {i * 7}", f"w{i % 3}")
    assert len(tree._labels) == peak  # the same ids again, no growth
    gc.collect()  # tuples and dicts of atomic values are untracked by a collection
    assert not any(gc.is_tracked(d) for d in tree._children + tree._tenants)
    assert not any(gc.is_tracked(column) for column in (tree._labels, tree._children, tree._tenants, tree._free))
    tokens = RadixTree(())
    tokens.insert((1, 2, 3), "w1")
    tokens.insert((1, 2, 4), "w2")
    gc.collect()
    assert not any(gc.is_tracked(label) for label in tokens._labels)


def test_match_by_tenant_gives_each_tenant_its_own_depth() -> None:
    tree = RadixTree()
    tree.insert("hello world", "a")
    tree.insert("hello there", "b")
    tree.insert("help", "c")
    assert tree.match_by_tenant("hello world!") == {"a": 11, "b": 6, "c": 3}
    assert tree.match_by_tenant("hex") == {"a": 2, "b": 2, "c": 2}
    assert tree.match_by_tenant("zzz") == {}


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab", min_size=1, max_size=300), st.integers(0, 3), st.text(alphabet="ab", max_size=300))
def test_common_prefix_agrees_with_a_character_walk(shared: str, offset: int, rest: str) -> None:
    label = shared + rest  # the first element is shared, as the tree guarantees
    key = "z" * offset + shared + rest[::-1]
    expected = lcp(key[offset:], label)
    assert _common_prefix(key, offset, label) == expected
    assert _common_prefix(tuple(map(ord, key)), offset, tuple(map(ord, label))) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(keys, tenants), max_size=30), st.lists(keys, min_size=1, max_size=10))
def test_insert_after_match_with_a_path_builds_the_same_tree(entries: list[tuple[str, str]],
                                                             queries: list[str]) -> None:
    plain, resumed = RadixTree(""), RadixTree("")
    for key, tenant in entries:
        path: list[int] = []
        assert resumed.match(key, path) == plain.match(key)  # recording the path changes no answer
        assert sum(len(resumed.label(node)) for node in path) <= len(key)
        plain.insert(key, tenant)
        resumed.insert(key, tenant, path)
    for query in queries:
        assert resumed.match(query) == plain.match(query)
    assert resumed.size == plain.size and resumed.node_count == plain.node_count
