"""
Hub recipe for SpecBlock / EAGLE-3 tree speculative decoding (`pip install specblock-hf`):

    model.generate(**inputs, custom_generate="<this repo>", trust_remote_code=True, drafter=drafter)

`generate()` hands a recipe all of its arguments and then, for a callable `custom_generate`, drops `assistant_model`,
`streamer` and `tokenizer` before decoding. This shim renames the first two to the names `specblock_hf.generate` takes
(`drafter=`, `text_streamer=`), turns `stop_strings` into a stopping criterion while the tokenizer is at hand, and runs
`generate()` again through the `custom_generate=specblock_hf.generate` door.
"""

from transformers import GenerationMixin, StoppingCriteriaList, StopStringCriteria

import specblock_hf


def generate(
    model,
    *args,
    drafter=None,
    assistant_model=None,
    streamer=None,
    text_streamer=None,
    stopping_criteria=None,
    **kwargs,
):
    """
    Decode with tree speculation. The drafter (a `SpecBlockDrafter` or `Eagle3Drafter`) comes as `drafter=` or
    `assistant_model=`, the streamer as `streamer=` or `text_streamer=`; every other argument is `generate()`'s own
    (plus `tree_config=` and `generator=`), and so is the output.
    """
    if drafter is not None and assistant_model is not None and drafter is not assistant_model:
        raise ValueError("Pass the drafter once, as `drafter=` or as `assistant_model=`, not two different models.")
    if streamer is not None and text_streamer is not None and streamer is not text_streamer:
        raise ValueError("Pass the streamer once, as `streamer=` or as `text_streamer=`, not two different streamers.")
    drafter = drafter if drafter is not None else assistant_model
    if drafter is None:
        raise ValueError(
            "This recipe needs a SpecBlock or EAGLE-3 drafter: model.generate(..., custom_generate=<repo>, "
            "trust_remote_code=True, drafter=drafter)."
        )
    stop_strings = kwargs.pop("stop_strings", None)
    if stop_strings is not None:
        if kwargs.get("tokenizer") is None:
            raise ValueError("`stop_strings` needs the model's tokenizer: pass `tokenizer=` to generate().")
        stop = StopStringCriteria(tokenizer=kwargs["tokenizer"], stop_strings=stop_strings)
        stopping_criteria = StoppingCriteriaList([*(stopping_criteria or []), stop])
    return GenerationMixin.generate(
        model, *args, stopping_criteria=stopping_criteria, custom_generate=specblock_hf.generate, drafter=drafter,
        text_streamer=streamer if streamer is not None else text_streamer, **kwargs,
    )  # fmt: skip
