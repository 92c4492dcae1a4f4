"""A small LRU of prompt-prefix KV caches, keyed by the prefix's token ids.

A batch's common prefix (system prompt + few-shot turns) is usually the same as the last
batch's, up to the first differing token of the user turns. :meth:`PrefixCache.longest`
finds the entry sharing the most leading tokens with a new prefix; the engine reuses that
many positions (a view, no copy) and computes only the rest. Entries are whole prefixes, so
memory is bounded by ``max_tokens`` (46 KB per token on SmolLM2-135M).

Only the model worker thread touches an instance; it needs no lock.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

__all__ = ["PrefixCache", "PrefixKV", "common_prefix_len"]


def common_prefix_len(a: tuple[int, ...] | list[int], b: tuple[int, ...] | list[int]) -> int:
    """Number of leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    i = 0
    # Compare in chunks first: prompts share hundreds of tokens and Python loops are slow.
    step = 64
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class PrefixKV:
    """Keys/values of ``tokens`` for every layer, each (kv_heads, len(tokens), head_dim)."""

    tokens: tuple[int, ...]
    layers: list[tuple[torch.Tensor, torch.Tensor]]

    def __len__(self) -> int:
        return len(self.tokens)

    def truncated(self, length: int) -> PrefixKV:
        """The first ``length`` positions, as views."""
        if length == len(self.tokens):
            return self
        return PrefixKV(
            self.tokens[:length], [(k[:, :length], v[:, :length]) for k, v in self.layers]
        )


class PrefixCache:
    """LRU of :class:`PrefixKV` holding at most ``max_entries`` and ``max_tokens`` tokens."""

    def __init__(self, max_entries: int = 4, max_tokens: int = 16384) -> None:
        self.max_entries = max_entries
        self.max_tokens = max_tokens
        self._entries: OrderedDict[tuple[int, ...], PrefixKV] = OrderedDict()
        self.hits = 0  # lookups that reused at least one token
        self.reused_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def total_tokens(self) -> int:
        return sum(len(e) for e in self._entries.values())

    def longest(self, tokens: tuple[int, ...]) -> PrefixKV | None:
        """The cached prefix sharing the most leading tokens with ``tokens``, cut to that
        length (None when nothing is shared)."""
        best, best_len = None, 0
        for key in self._entries:
            n = common_prefix_len(key, tokens)
            if n > best_len:
                best, best_len = key, n
        if best is None:
            return None
        self._entries.move_to_end(best)
        self.hits += 1
        self.reused_tokens += best_len
        return self._entries[best].truncated(best_len)

    def put(self, entry: PrefixKV) -> None:
        if self.max_entries <= 0 or len(entry) > self.max_tokens:
            return
        # A stored prefix that the new one extends is redundant: the new one serves it too.
        for key in [
            k for k in self._entries if len(k) <= len(entry) and entry.tokens[: len(k)] == k
        ]:
            del self._entries[key]
        self._entries[entry.tokens] = entry
        self._entries.move_to_end(entry.tokens)
        while len(self._entries) > self.max_entries or self.total_tokens > self.max_tokens:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
