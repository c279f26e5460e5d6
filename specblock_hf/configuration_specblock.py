"""Configuration of the SpecBlock drafter: a Llama config plus the keys of the published checkpoints."""

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig, PretrainedConfig

from .drafter_base import target_shape_kwargs


@strict
class SpecBlockConfig(LlamaConfig):
    r"""
    A small Llama-style decoder that drafts a *block* of `diffspec_draft_token_num` dependent positions per forward.

    The field names are those of the published SpecBlock checkpoints (`config.json` of a Llama config plus the keys
    below), so those checkpoints load unchanged. `vocab_size` is the *target* vocabulary (the frozen input embedding
    is borrowed from the target); `draft_vocab_size` is the drafter's output vocabulary.

    Args:
        draft_vocab_size (`int`): size Vd of the drafter's output vocabulary (`lm_head` rows).
        diffspec_draft_token_num (`int`): K, the number of slots (dependent positions) one block drafts.
        rank_classes (`int`): number of classes of the rank head (4: top-1, rank 2-4, rank 5-10, miss).
        target_hidden_size (`int`, *optional*): hidden size of the target; defaults to `hidden_size`.
        num_ttt_blocks (`int`): number of blocks unrolled in test-time training.
        target_layer_ids (`list[int]`, *optional*): the three target decoder layers whose outputs form the features;
            defaults to `[1, L//2 - 1, L - 4]` of the target's `L` layers.
    """

    model_type = "specblock"

    draft_vocab_size: int = 32000
    diffspec_draft_token_num: int = 4
    rank_classes: int = 4
    target_hidden_size: int | None = None
    num_ttt_blocks: int = 3
    target_layer_ids: list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.target_hidden_size is None:
            self.target_hidden_size = self.hidden_size
        super().__post_init__(**kwargs)

    @classmethod
    def for_target(cls, target_config: PretrainedConfig, **overrides):
        """A fresh drafter config shaped for `target_config` (vocabulary, widths, heads, RoPE), plus `overrides`."""
        return cls(
            **{**target_shape_kwargs(target_config), "architectures": ["LlamaForCausalLMSpecBlock"], **overrides}
        )

    def validate_architecture(self):
        """Part of `@strict` validation: rejects shapes the drafter cannot be built with."""
        super().validate_architecture()
        if self.diffspec_draft_token_num < 1:
            raise ValueError(f"`diffspec_draft_token_num` (K) must be >= 1, got {self.diffspec_draft_token_num}.")
        if self.draft_vocab_size < 20 or self.draft_vocab_size > self.vocab_size:
            raise ValueError(
                f"`draft_vocab_size` must lie in [20, vocab_size={self.vocab_size}] (the rank features use the top-20 "
                f"draft logits), got {self.draft_vocab_size}."
            )
        if self.rank_classes < 2:
            raise ValueError(f"`rank_classes` must be >= 2, got {self.rank_classes}.")
        if self.target_layer_ids is not None and len(self.target_layer_ids) != 3:
            raise ValueError(f"`target_layer_ids` must name 3 target layers, got {self.target_layer_ids}.")


__all__ = ["SpecBlockConfig"]
