"""The doors into `model.generate()`: `enable(model)` + `assistant_model=`, and `custom_generate=specblock_hf.generate`."""

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from .drafter_base import DrafterPreTrainedModel
from .generation import TreeConfig, prepare_drafter, speculative_decode


class SpecBlockGenerationMixin:
    """
    Added to a target's class by `enable(model)`: `generate(..., assistant_model=drafter)` decodes with tree
    speculation when `drafter` is a SpecBlock or EAGLE-3 drafter, and exactly as before for any other assistant.
    Set `drafter.tree_config` to fix the tree shape; `adaptation=` (a mode, an `AdaptationConfig` or False) sets
    online adaptation for one call.
    """

    def generate(self, *args, assistant_model=None, adaptation=None, **kwargs):
        if not isinstance(assistant_model, DrafterPreTrainedModel):
            if adaptation is not None:
                if kwargs.get("custom_generate") is None:
                    raise ValueError(
                        "adaptation= applies to SpecBlock / EAGLE-3 drafters (assistant_model= or drafter=) only."
                    )
                kwargs["adaptation"] = adaptation  # for a custom decoding function such as specblock_hf.generate
            return super().generate(*args, assistant_model=assistant_model, **kwargs)
        prepare_drafter(self, assistant_model)  # clear shape errors before generate()'s own assistant checks
        generation_config = kwargs.get("generation_config") or self.generation_config
        num_beams = kwargs.get("num_beams") or generation_config.num_beams or 1
        if num_beams != 1:  # generate() would quietly run plain beam search without the drafter
            raise ValueError(f"Speculative decoding does not do beam search; got num_beams={num_beams}.")
        self._specblock_adaptation = adaptation  # generate() would reject an unknown keyword on its way down
        try:
            return super().generate(*args, assistant_model=assistant_model, **kwargs)
        finally:
            del self._specblock_adaptation

    def _assisted_decoding(
        self,
        input_ids,
        logits_processor,
        stopping_criteria,
        generation_config,
        synced_gpus=False,
        streamer=None,
        inputs_tensor=None,
        assistant_model=None,
        assistant_tokenizer=None,
        tokenizer=None,
        **model_kwargs,
    ):
        if not isinstance(assistant_model, DrafterPreTrainedModel):
            return super()._assisted_decoding(
                input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=synced_gpus,
                streamer=streamer, inputs_tensor=inputs_tensor, assistant_model=assistant_model,
                assistant_tokenizer=assistant_tokenizer, tokenizer=tokenizer, **model_kwargs,
            )  # fmt: skip
        if synced_gpus:
            raise ValueError("Speculative tree decoding does not support synced_gpus (DeepSpeed ZeRO-3 / FSDP) yet.")
        return speculative_decode(
            self, input_ids, assistant_model, logits_processor, stopping_criteria, generation_config,
            streamer=streamer, adaptation=getattr(self, "_specblock_adaptation", None), **model_kwargs,
        )  # fmt: skip


_ENABLED_CLASSES: dict[type, type] = {}


def enable(model: PreTrainedModel) -> PreTrainedModel:
    """
    Make `model.generate(..., assistant_model=drafter)` use SpecBlock / EAGLE-3 tree speculation for our drafters.
    Only this instance changes (its class gains `SpecBlockGenerationMixin`); other assistants behave as before.
    Returns the same model.
    """
    cls = type(model)
    if not issubclass(cls, SpecBlockGenerationMixin):
        if cls not in _ENABLED_CLASSES:
            _ENABLED_CLASSES[cls] = type(cls.__name__, (SpecBlockGenerationMixin, cls), {"__module__": cls.__module__})
        model.__class__ = _ENABLED_CLASSES[cls]
    return model


def disable(model: PreTrainedModel) -> PreTrainedModel:
    """Undo `enable(model)`."""
    cls = type(model)
    if issubclass(cls, SpecBlockGenerationMixin):
        model.__class__ = next(base for base in cls.__bases__ if base is not SpecBlockGenerationMixin)
    return model


def generate(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    drafter: DrafterPreTrainedModel | None = None,
    tree_config: TreeConfig | None = None,
    text_streamer: BaseStreamer | None = None,
    generator: torch.Generator | None = None,
    adaptation=None,
    **model_kwargs,
) -> torch.LongTensor:
    """
    `model.generate(**inputs, custom_generate=specblock_hf.generate, drafter=drafter, ...)`.

    `generate()` drops `assistant_model`, `streamer` and `tokenizer` before calling a custom decoding function, so this
    door takes `drafter=` and `text_streamer=` instead, and stop strings come as
    `stopping_criteria=[StopStringCriteria(tokenizer, stop_strings)]`; `tree_config=` fixes the tree shape and
    `generator=` seeds sampling; `adaptation=` sets online adaptation for the call. (The `enable(model)` door and the
    Hub recipe take the usual names.)
    """
    if drafter is None:
        raise ValueError(
            "Pass the drafter: model.generate(..., custom_generate=specblock_hf.generate, drafter=drafter)."
        )
    if text_streamer is not None:
        text_streamer.put(input_ids.cpu())
    return speculative_decode(
        model, input_ids, drafter, logits_processor, stopping_criteria, generation_config, streamer=text_streamer,
        tree_config=tree_config, generator=generator, adaptation=adaptation, **model_kwargs,
    )  # fmt: skip
