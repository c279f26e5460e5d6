"""The target side of a round: feature taps on three decoder layers and the 4D tree-verification mask."""

import inspect
from contextlib import contextmanager

import torch
from transformers import Cache, PreTrainedModel

SUPPORTED_ATTENTION = ("sdpa", "eager")


def check_target(model: PreTrainedModel, batch_size: int) -> None:
    """Raise a `ValueError` naming the fix for targets and inputs the tree decoder does not support (yet)."""
    implementation = model.config._attn_implementation
    if implementation not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"SpecBlock verifies a tree with a custom 4D attention mask, which attn_implementation='{implementation}' "
            f"cannot take. Load the target with attn_implementation='sdpa' (or 'eager')."
        )
    if batch_size != 1:
        raise ValueError(
            f"SpecBlock decoding supports batch size 1 for now, got {batch_size} sequences. Call generate() once per "
            "prompt."
        )
    if model.config.is_encoder_decoder:
        raise ValueError("SpecBlock decoding supports decoder-only targets.")


def cache_argument(model: PreTrainedModel, cache: Cache) -> dict[str, Cache]:
    """The cache as a keyword of `model.forward`: `cache` from transformers 5.25 on, `past_key_values` before."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


class FeatureTap:
    """
    Forward hooks on the three target decoder layers whose outputs (before the final norm) form the drafter's
    features, low | mid | high (SPEC §2). Only those three outputs are kept, not every hidden state.
    """

    def __init__(self, model: PreTrainedModel, layer_ids: list[int]):
        self.layers = [model.get_decoder().layers[index] for index in layer_ids]
        self.outputs: list[torch.Tensor | None] = [None] * len(layer_ids)

    @contextmanager
    def attached(self):
        handles = [layer.register_forward_hook(self._hook(slot)) for slot, layer in enumerate(self.layers)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, slot: int):
        def hook(module, args, output):
            self.outputs[slot] = output[0] if isinstance(output, tuple) else output

        return hook

    def features(self) -> torch.Tensor:
        """`(seq_len, 3 * hidden_size)` features of the last forward (batch size 1)."""
        return torch.cat(self.outputs, dim=-1)[0]


def _layer_kinds(model: PreTrainedModel, cache: Cache) -> dict[str, int]:
    """Each distinct attention kind of the target mapped to one cache layer of that kind."""
    config = model.config.get_text_config()
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        kind = "sliding_attention" if getattr(config, "sliding_window", None) is not None else "full_attention"
        layer_types = [kind] * len(cache.layers)
    kinds: dict[str, int] = {}
    for index, kind in enumerate(layer_types):
        kinds.setdefault(kind, index)
    return kinds


def tree_attention_mask(
    model: PreTrainedModel,
    cache: Cache,
    ancestor_mask: torch.BoolTensor,
    depths: torch.LongTensor,
    prefix_mask: torch.BoolTensor | None,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """
    The verification mask: every tree node sees the (unpadded) prefix and its own ancestors. Sliding-window layers
    see only the keys their cache layer hands to attention, and only those a plain decode at the node's index would
    see (`key > query - window`). Returns one mask, or a dict per layer type when the target mixes kinds.

    Args:
        ancestor_mask (`torch.BoolTensor` of shape `(num_nodes, num_nodes)`)
        depths (`torch.LongTensor` of shape `(num_nodes,)`)
        prefix_mask (`torch.BoolTensor` of shape `(past_len,)`, *optional*): False at left-padding positions.

    Returns:
        `torch.BoolTensor` (sdpa) or additive float (eager) of shape `(1, 1, num_nodes, kv_len)` per layer kind.
    """
    config = model.config.get_text_config()
    num_nodes = depths.shape[0]
    device = depths.device
    query_index = cache.get_seq_length() + depths  # the cache index a plain decode would give each node
    masks = {}
    for kind, layer_index in _layer_kinds(model, cache).items():
        layer = cache.layers[layer_index]
        kv_length, kv_offset = layer.get_mask_sizes(num_nodes)
        past_index = torch.arange(kv_offset, kv_offset + kv_length - num_nodes, device=device)
        prefix = torch.ones(num_nodes, past_index.numel(), dtype=torch.bool, device=device)
        if prefix_mask is not None:
            prefix &= prefix_mask[past_index][None, :]
        tree = ancestor_mask
        if getattr(layer, "is_sliding", False):
            window = layer.sliding_window
            prefix = prefix & (past_index[None, :] > query_index[:, None] - window)
            tree = tree & (depths[None, :] > depths[:, None] - window)
        mask = torch.cat([prefix, tree], dim=1)[None, None]
        if config._attn_implementation == "eager":
            dtype = model.dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
        masks[kind] = mask
    return masks.popitem()[1] if len(masks) == 1 else masks
