"""Configuration of the EAGLE-3 baseline drafter: a Llama config plus the keys of the published checkpoints."""

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig, PretrainedConfig

from .drafter_base import target_shape_kwargs


@strict
class Eagle3Config(LlamaConfig):
    r"""
    One Llama decoder layer that drafts one token per forward from target features (EAGLE-3, SPEC §7).

    The field names are those of the published EAGLE-3 checkpoints (SpecForge and official), whose `config.json` is a
    Llama config (`model_type: "llama"`, `architectures: ["LlamaForCausalLMEagle3"]`) plus the keys below, so those
    checkpoints load unchanged. The drafter always has exactly one decoder layer: `num_hidden_layers` is kept as
    published (often 1, sometimes the target's) and does not change the architecture. `vocab_size` is the *target*
    vocabulary (the frozen input embedding is borrowed from the target); `draft_vocab_size` is the output vocabulary.

    Args:
        draft_vocab_size (`int`): size Vd of the drafter's output vocabulary (`lm_head` rows).
        target_hidden_size (`int`, *optional*): hidden size of the target; defaults to `hidden_size`.
        target_layer_ids (`list[int]`, *optional*): the three target decoder layers whose outputs form the features;
            defaults to `[1, L//2 - 1, L - 4]` of the target's `L` layers.
    """

    model_type = "eagle3"

    draft_vocab_size: int = 32000
    target_hidden_size: int | None = None
    target_layer_ids: list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.target_hidden_size is None:
            self.target_hidden_size = self.hidden_size
        # SpecForge checkpoints name the feature layers in `eagle_config.eagle_aux_hidden_state_layer_ids`
        eagle_config = kwargs.get("eagle_config") or {}
        if self.target_layer_ids is None and eagle_config.get("eagle_aux_hidden_state_layer_ids") is not None:
            self.target_layer_ids = list(eagle_config["eagle_aux_hidden_state_layer_ids"])
        super().__post_init__(**kwargs)

    @classmethod
    def for_target(cls, target_config: PretrainedConfig, **overrides):
        """A fresh drafter config shaped for `target_config` (vocabulary, widths, heads, RoPE), plus `overrides`."""
        return cls(**{**target_shape_kwargs(target_config), "architectures": ["LlamaForCausalLMEagle3"], **overrides})

    def validate_architecture(self):
        """Part of `@strict` validation: rejects shapes the drafter cannot be built with."""
        super().validate_architecture()
        if self.draft_vocab_size < 1 or self.draft_vocab_size > self.vocab_size:
            raise ValueError(
                f"`draft_vocab_size` must lie in [1, vocab_size={self.vocab_size}], got {self.draft_vocab_size}."
            )
        if self.target_hidden_size < 1:
            raise ValueError(f"`target_hidden_size` must be >= 1, got {self.target_hidden_size}.")
        if self.target_layer_ids is not None and (len(self.target_layer_ids) != 3 or min(self.target_layer_ids) < 0):
            raise ValueError(f"`target_layer_ids` must name 3 target layers (ids >= 0), got {self.target_layer_ids}.")


__all__ = ["Eagle3Config"]
