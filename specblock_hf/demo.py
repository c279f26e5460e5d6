"""`specblock demo`: stream a chat answer with speculative decoding, then compare speed and output with plain decoding."""

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, TextStreamer

from .auto import load_drafter as load_pretrained_drafter
from .divergence import first_divergence
from .drafter_base import DrafterPreTrainedModel
from .integration import enable
from .modeling_specblock import SpecBlockDrafter

DEFAULT_PROMPT = "Explain in a few sentences why the sky is blue."
SHIPPED_DRAFTER = Path(__file__).parent / "drafters" / "SmolLM2-135M-Instruct-SpecBlock"


@dataclass
class DemoResult:
    speculative_tokens_per_second: float
    plain_tokens_per_second: float
    tau: float
    identical: bool
    summary: str


def load_drafter(name_or_path: str | None, target: PreTrainedModel) -> tuple[DrafterPreTrainedModel, str]:
    """The given drafter, else the shipped SpecBlock drafter, else (with a warning) an untrained one."""
    if name_or_path is not None:
        return load_pretrained_drafter(name_or_path, target=target), str(name_or_path)
    if (SHIPPED_DRAFTER / "config.json").is_file():
        return SpecBlockDrafter.from_pretrained(SHIPPED_DRAFTER, target=target), SHIPPED_DRAFTER.name
    from .configuration_specblock import SpecBlockConfig

    config = SpecBlockConfig.for_target(target.config, num_hidden_layers=2, draft_vocab_size=8192)
    drafter = SpecBlockDrafter(config)
    drafter.init_vocab_mapping(torch.arange(config.draft_vocab_size))
    return drafter.bind_target(target).eval(), "UNTRAINED SpecBlock drafter (expect tau near 1, no speedup)"


def _timed(function):
    start = time.perf_counter()
    output = function()
    return output, time.perf_counter() - start


def run_demo(
    prompt: str = DEFAULT_PROMPT,
    target_name: str | None = None,
    drafter_name: str | None = None,
    max_new_tokens: int = 128,
    dtype: torch.dtype = torch.bfloat16,
) -> DemoResult:
    from .models import load_target

    target, tokenizer = load_target(target_name, dtype=dtype)
    enable(target)
    drafter, drafter_label = load_drafter(drafter_name, target)
    print(f"target: {target_name or 'SmolLM2-135M-Instruct'} ({dtype}, {target.device}); drafter: {drafter_label}")
    messages = [{"role": "user", "content": prompt}]
    input_ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    input_ids = input_ids["input_ids"].to(target.device)
    settings = {"do_sample": False, "max_new_tokens": max_new_tokens}
    target.generate(input_ids, max_new_tokens=4, assistant_model=drafter)  # warm-up, excluded from timings
    target.generate(input_ids, max_new_tokens=4)

    print(f"\n> {prompt}\n")
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    speculative, speculative_time = _timed(
        lambda: target.generate(input_ids, **settings, assistant_model=drafter, streamer=streamer)
    )
    stats = drafter.generation_stats
    plain, plain_time = _timed(lambda: target.generate(input_ids, **settings))
    prompt_length = input_ids.shape[1]
    speculative_speed = (speculative.shape[1] - prompt_length) / speculative_time
    plain_speed = (plain.shape[1] - prompt_length) / plain_time
    divergence = first_divergence(target, prompt_length, plain, speculative)
    identical = divergence is None and speculative.shape == plain.shape
    lines = [
        "",
        f"speculative: {speculative_speed:.1f} tokens/s, tau={stats.mean_acceptance_length:.2f} ({stats.rounds} rounds)",
        f"plain generate(): {plain_speed:.1f} tokens/s  ->  speedup {speculative_speed / plain_speed:.2f}x",
        f"round split: {stats.summary()}",
    ]
    if identical:
        lines.append("outputs identical: yes")
    elif divergence is not None:
        verdict = "a numerical near-tie" if divergence.is_near_tie() else "NOT a near-tie: please report a bug"
        lines.append(
            f"outputs identical: no - they part at new token {divergence.index} "
            f"({tokenizer.decode([divergence.expected_token])!r} vs {tokenizer.decode([divergence.actual_token])!r}), "
            f"target logit margin {divergence.margin:.3f}: {verdict}"
        )
    else:
        lines.append("outputs identical: no (different lengths)")
    summary = "\n".join(lines)
    print(summary)
    return DemoResult(speculative_speed, plain_speed, stats.mean_acceptance_length, identical, summary)
