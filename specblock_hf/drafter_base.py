"""What every drafter shares: strict loading of published checkpoints, the borrowed target embedding, vocab maps."""

import json
import os
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

VOCAB_MAPPING_FILE = "vocab_mapping.pt"
EMBEDDING_KEY = "embed_tokens.weight"


def default_target_layer_ids(num_target_layers: int) -> list[int]:
    """Target decoder layers `[1, L//2 - 1, L - 4]` whose outputs (low | mid | high) are the drafter's features."""
    if num_target_layers < 4:
        raise ValueError(
            f"The target needs at least 4 decoder layers for the feature taps, it has {num_target_layers}."
        )
    return [1, num_target_layers // 2 - 1, num_target_layers - 4]


def target_shape_kwargs(target_config: PretrainedConfig) -> dict:
    """Config fields a new drafter copies from its target: vocabulary, widths, heads, norm epsilon and RoPE."""
    text = target_config.get_text_config()
    return {
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "target_hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads,
        "head_dim": getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
        "rms_norm_eps": text.rms_norm_eps,
        "max_position_embeddings": text.max_position_embeddings,
        "rope_parameters": dict(text.rope_parameters) if getattr(text, "rope_parameters", None) else None,
        "bos_token_id": text.bos_token_id,
        "eos_token_id": text.eos_token_id,
        "pad_token_id": text.pad_token_id,
    }


class DrafterPreTrainedModel(PreTrainedModel):
    """
    Base of the drafters. A drafter reads the target's input embedding instead of storing one: `embed_tokens` is
    `None` until `bind_target` (or `from_pretrained(..., target=model)`) borrows the target's embedding module, and
    it is never saved. Loading is strict: any missing, unexpected or mis-shaped key raises, naming the keys.
    """

    base_model_prefix = "drafter"
    _supports_sdpa = True
    # Checkpoints that do carry a copy of the target embedding load too: the copy is dropped, the target's is used.
    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [r"^embed_tokens\.weight$"]

    def init_vocab_mapping(self, used_token_ids: torch.Tensor) -> None:
        """
        Set `d2t`/`t2d` from the target ids the draft vocabulary covers.

        Args:
            used_token_ids (`torch.LongTensor` of shape `(draft_vocab_size,)`): distinct target ids, any order.
        """
        used = used_token_ids.to(self.d2t.device).unique(sorted=True)
        if used.numel() != self.config.draft_vocab_size:
            raise ValueError(f"Need {self.config.draft_vocab_size} distinct target ids, got {used.numel()}.")
        self.d2t.copy_(used - torch.arange(used.numel(), device=used.device))
        self.t2d.zero_()
        self.t2d[used] = True

    def draft_to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Map draft-vocabulary ids to target ids: `d + d2t[d]`."""
        return draft_ids + self.d2t[draft_ids]

    @property
    def target_embedding(self) -> nn.Module:
        """The target's input embedding module, once bound."""
        if self.embed_tokens is None:
            raise RuntimeError(
                f"{type(self).__name__} has no input embedding: it borrows the target's. Load it with "
                "`from_pretrained(path, target=model)` or call `drafter.bind_target(model)` first."
            )
        return self.embed_tokens

    def bind_target(self, target: PreTrainedModel) -> "DrafterPreTrainedModel":
        """
        Borrow `target`'s input embedding and move the drafter to the target's device and dtype.

        Raises a `ValueError` naming the mismatch when the drafter was not trained for a target of this shape.
        """
        text_config = target.config.get_text_config()
        embedding = target.get_input_embeddings()
        vocab, width = embedding.weight.shape
        expected = (self.config.vocab_size, self.config.target_hidden_size)
        if (vocab, width) != expected:
            raise ValueError(
                f"Drafter/target mismatch: the drafter expects a target with vocab_size={expected[0]} and "
                f"hidden_size={expected[1]}, but the target's embedding is {vocab} x {width}. Load the drafter "
                "trained for this target (same tokenizer and model size)."
            )
        self.target_layer_ids = self.config.target_layer_ids or default_target_layer_ids(text_config.num_hidden_layers)
        if max(self.target_layer_ids) >= text_config.num_hidden_layers:
            raise ValueError(
                f"Drafter taps target layers {self.target_layer_ids}, but the target has only "
                f"{text_config.num_hidden_layers} layers."
            )
        self.to(device=embedding.weight.device, dtype=embedding.weight.dtype)
        self.embed_tokens = embedding
        return self

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save in the published layout: no embedding key, and the published architecture name in `config.json`."""
        super().save_pretrained(save_directory, *args, **kwargs)
        config_path = Path(save_directory) / "config.json"
        config = json.loads(config_path.read_text())
        config["architectures"] = [self.published_architecture]
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    def state_dict(self, *args, **kwargs):
        """The drafter's own weights: the borrowed target embedding is left out (published layout)."""
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        state.pop(prefix + EMBEDDING_KEY, None)
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As `nn.Module.load_state_dict`, where the borrowed embedding may be absent (it is never saved)."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [key for key in result.missing_keys if key != EMBEDDING_KEY]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"Error loading {type(self).__name__} state: missing keys {missing}, "
                f"unexpected keys {result.unexpected_keys}."
            )
        return result

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, *model_args, target: PreTrainedModel | None = None, **kwargs
    ):
        """
        Load a drafter from a local folder or a Hub id, strictly: every checkpoint key must match the architecture
        (the input embedding, borrowed from `target`, is the one key a checkpoint never has). An optional
        `vocab_mapping.pt` (`{"d2t", "t2d"}`, loaded with `weights_only=True`) overrides the stored vocab maps.
        """
        want_info = kwargs.pop("output_loading_info", False)
        kwargs["ignore_mismatched_sizes"] = True  # mis-shaped keys are reported below, by name, with the others
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        problems = {
            name: sorted(info.get(name) or []) for name in ("missing_keys", "unexpected_keys", "mismatched_keys")
        }
        problems = {name: keys for name, keys in problems.items() if keys}
        if problems:
            details = "; ".join(f"{name}: {keys}" for name, keys in problems.items())
            raise ValueError(
                f"Checkpoint '{pretrained_model_name_or_path}' does not match {cls.__name__} "
                f"(the input embedding is the only key allowed to be absent): {details}. Check that the checkpoint "
                "is of this architecture and that config.json matches its shapes."
            )
        model._load_vocab_mapping(pretrained_model_name_or_path, kwargs)
        if target is not None:
            model.bind_target(target)
        return (model, info) if want_info else model

    def _load_vocab_mapping(self, name_or_path: str, kwargs: dict) -> None:
        """Apply an optional `vocab_mapping.pt` beside the checkpoint (only meaningful when Vd differs from V)."""
        if self.config.draft_vocab_size == self.config.vocab_size:
            return
        if os.path.isdir(name_or_path):
            path = os.path.join(name_or_path, VOCAB_MAPPING_FILE)
            path = path if os.path.isfile(path) else None
        else:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            hub_kwargs = {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
            try:
                path = hf_hub_download(name_or_path, VOCAB_MAPPING_FILE, **hub_kwargs)
            except EntryNotFoundError:
                path = None
        if path is None:
            return
        mapping = torch.load(path, map_location=self.d2t.device, weights_only=True)
        if not {"d2t", "t2d"} <= set(mapping):
            raise ValueError(f"{path} must hold the keys 'd2t' and 't2d', found {sorted(mapping)}.")
        if mapping["d2t"].shape != self.d2t.shape or mapping["t2d"].shape != self.t2d.shape:
            raise ValueError(
                f"{path}: d2t {tuple(mapping['d2t'].shape)} / t2d {tuple(mapping['t2d'].shape)} do not match "
                f"draft_vocab_size={self.config.draft_vocab_size} / vocab_size={self.config.vocab_size}."
            )
        self.d2t.copy_(mapping["d2t"].long())
        self.t2d.copy_(mapping["t2d"].bool())
