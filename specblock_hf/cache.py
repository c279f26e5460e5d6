"""Commit the accepted path: the drafter's own key/value store, and compaction of the target's `Cache`."""

import torch
from transformers import Cache

from .attention import KeyValue


class DrafterCache:
    """
    Rotated keys and values of a drafter's committed entries, per layer, in buffers grown by doubling so that a round
    appends in place instead of re-concatenating the whole past.

    Batch size 1: each buffer is `(1, num_kv_heads, capacity, head_dim)`.
    """

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.length = 0

    def append(self, key_values: list[KeyValue]) -> None:
        """Append one forward's keys and values (each `(1, num_kv_heads, n, head_dim)`) to every layer."""
        new = key_values[0][0].shape[2]
        end = self.length + new
        for layer, (key, value) in enumerate(key_values):
            if self.keys[layer] is None or end > self.keys[layer].shape[2]:
                capacity = max(2 * end, 64)
                self.keys[layer] = self._grow(self.keys[layer], key, capacity)
                self.values[layer] = self._grow(self.values[layer], value, capacity)
            self.keys[layer][:, :, self.length : end] = key
            self.values[layer][:, :, self.length : end] = value
        self.length = end

    def _grow(self, buffer: torch.Tensor | None, like: torch.Tensor, capacity: int) -> torch.Tensor:
        grown = like.new_empty(like.shape[0], like.shape[1], capacity, like.shape[3])
        if buffer is not None:
            grown[:, :, : self.length] = buffer[:, :, : self.length]
        return grown

    def past(self, extra: list[KeyValue] | None = None) -> list[KeyValue] | None:
        """The committed keys and values per layer, followed by `extra` uncommitted ones when given."""
        if self.length == 0:
            return extra
        past = [(k[:, :, : self.length], v[:, :, : self.length]) for k, v in zip(self.keys, self.values, strict=True)]
        return extend_key_values(past, extra)


def extend_key_values(past: list[KeyValue] | None, new: list[KeyValue] | None) -> list[KeyValue] | None:
    """Per layer, `past` keys and values followed by `new` ones (either may be None)."""
    if past is None or new is None:
        return new if past is None else past
    return [
        (torch.cat([k, new_k], dim=2), torch.cat([v, new_v], dim=2))
        for (k, v), (new_k, new_v) in zip(past, new, strict=True)
    ]


def commit_target_cache(cache: Cache, kept_nodes: torch.LongTensor, num_tree_nodes: int) -> None:
    """
    Keep the prefix plus the tree nodes `kept_nodes` (the root and the accepted path, in order) in the target cache
    after a tree-verification forward, dropping the rest: gather the kept rows behind the prefix, then crop.

    Works for full-attention and sliding-window layers alike, since past recording keeps every row until `crop`.

    Args:
        cache (`Cache`): the target cache, holding the prefix followed by `num_tree_nodes` tree rows.
        kept_nodes (`torch.LongTensor` of shape `(num_kept,)`): tree node indices, ascending, starting with 0.
    """
    num_kept = kept_nodes.shape[0]
    for layer in cache.layers:
        if not layer.is_initialized or layer.keys.numel() == 0:
            continue
        base = layer.keys.shape[2] - num_tree_nodes
        source = base + kept_nodes.to(layer.keys.device)
        layer.keys[:, :, base : base + num_kept] = layer.keys[:, :, source]
        layer.values[:, :, base : base + num_kept] = layer.values[:, :, source]
    cache.crop(-(num_tree_nodes - num_kept))
