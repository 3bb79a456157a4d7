"""engine.lru.LRU: least recently used out, past its entries or its total weight."""

from __future__ import annotations

from agentd.engine.lru import LRU


def test_past_its_entries_the_least_recently_used_goes():
    cache: LRU[str, int] = LRU(max_entries=2, max_weight=100)
    cache.put("a", 1, 1)
    cache.put("b", 2, 1)
    assert cache.get("a") == 1  # now the most recently used
    cache.put("c", 3, 1)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    assert len(cache) == 2 and cache.weight == 2


def test_past_its_weight_entries_go_until_it_is_under_again():
    cache: LRU[str, str] = LRU(max_entries=10, max_weight=10)
    for key in "abc":
        cache.put(key, key, 3)
    cache.grew("c", 4)  # 3 + 3 + 7
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (None, "b", "c") and cache.weight == 10
    cache.put("d", "d", 11)  # heavier than it all: nothing stays
    assert len(cache) == 0 and cache.weight == 0


def test_a_replaced_or_popped_entry_gives_its_weight_back():
    cache: LRU[str, str] = LRU(max_entries=10, max_weight=10)
    cache.put("a", "one", 4)
    cache.put("a", "two", 6)
    assert cache.get("a") == "two" and cache.weight == 6
    assert cache.pop("a") == "two" and cache.pop("a") is None and cache.weight == 0
    cache.grew("a", 5)  # gone: nothing to grow
    assert cache.weight == 0


def test_an_entrys_weight_is_read_without_counting_as_a_use():
    cache: LRU[str, str] = LRU(max_entries=2, max_weight=100)
    cache.put("a", "a", 4)
    cache.put("b", "b", 5)
    cache.grew("a", 3)  # growing is no use either
    assert (cache.weight_of("a"), cache.weight_of("b"), cache.weight_of("z")) == (7, 5, None)
    cache.put("c", "c", 1)  # "a" is still the least recently used
    assert cache.get("a") is None and cache.weight_of("a") is None and cache.get("b") == "b"
