"""Load any supported drafter checkpoint, choosing the class from its `config.json`."""

from transformers import PretrainedConfig, PreTrainedModel

from .drafter_base import DrafterPreTrainedModel
from .modeling_eagle3 import Eagle3Drafter
from .modeling_specblock import SpecBlockDrafter

# published checkpoints say model_type "llama"; their `architectures` name the drafter
DRAFTER_CLASSES: dict[str, type[DrafterPreTrainedModel]] = {
    "specblock": SpecBlockDrafter,
    "LlamaForCausalLMSpecBlock": SpecBlockDrafter,
    "LlamaForCausalLMSpecBlockShift": SpecBlockDrafter,
    "SpecBlockDrafter": SpecBlockDrafter,
    "eagle3": Eagle3Drafter,
    "LlamaForCausalLMEagle3": Eagle3Drafter,
    "Eagle3LlamaForCausalLM": Eagle3Drafter,
    "Eagle3Drafter": Eagle3Drafter,
}


def load_drafter(
    name_or_path: str, target: PreTrainedModel | None = None, **kwargs
) -> SpecBlockDrafter | Eagle3Drafter:
    """
    `SpecBlockDrafter` or `Eagle3Drafter` from a local folder or Hub id, whichever its config declares
    (`model_type`, else `architectures`), loaded strictly and bound to `target` when given.
    """
    config, _ = PretrainedConfig.get_config_dict(name_or_path, **kwargs)
    names = [config.get("model_type"), *(config.get("architectures") or [])]
    for name in names:
        if name in DRAFTER_CLASSES:
            return DRAFTER_CLASSES[name].from_pretrained(name_or_path, target=target, **kwargs)
    raise ValueError(
        f"'{name_or_path}' is not a SpecBlock or EAGLE-3 drafter checkpoint: its config declares model_type="
        f"{config.get('model_type')!r}, architectures={config.get('architectures')}. Known: {sorted(DRAFTER_CLASSES)}."
    )
