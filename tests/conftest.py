"""Tiny random targets of every supported family and tiny drafters bound to them, all on CPU in fp32."""

from contextlib import contextmanager

import pytest
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from specblock_hf import Eagle3Config, Eagle3Drafter, SpecBlockConfig, SpecBlockDrafter

VOCAB = 256
HIDDEN = 64
FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma3")


def _common(**overrides):
    kwargs = dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.15,
    )  # fmt: skip
    kwargs.update(overrides)
    return kwargs


def make_target(family: str = "llama", seed: int = 0, attn_implementation: str = "sdpa", dtype=torch.float32):
    """A 4-layer random target; Mistral and Gemma3 get a sliding window of 8 so that trees cross it."""
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**_common()))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**_common()))
    elif family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(**_common(head_dim=16)))
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(**_common(sliding_window=8)))
    elif family == "gemma3":
        config = Gemma3TextConfig(
            **_common(head_dim=16, num_hidden_layers=6), sliding_window=8,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
        )  # fmt: skip
        model = Gemma3ForCausalLM(config)
    else:
        raise ValueError(family)
    model.config._attn_implementation = attn_implementation
    model.generation_config.pad_token_id = 0
    return model.to(dtype).eval()


def make_specblock(target, seed: int = 0, block_size: int = 4, num_layers: int = 2, draft_vocab: int = 128):
    torch.manual_seed(seed)
    config = SpecBlockConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, draft_vocab_size=draft_vocab,
        diffspec_draft_token_num=block_size, architectures=["LlamaForCausalLMSpecBlock"],
    )  # fmt: skip
    drafter = SpecBlockDrafter(config)
    drafter.init_vocab_mapping(torch.randperm(VOCAB)[:draft_vocab])
    return drafter.bind_target(target).eval()


def make_eagle3(target, seed: int = 0, draft_vocab: int = 128):
    torch.manual_seed(seed)
    config = Eagle3Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, draft_vocab_size=draft_vocab, architectures=["LlamaForCausalLMEagle3"],
    )  # fmt: skip
    drafter = Eagle3Drafter(config)
    drafter.init_vocab_mapping(torch.randperm(VOCAB)[:draft_vocab])
    return drafter.bind_target(target).eval()


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    """Tiny models run fastest on one thread (and do not fight other processes); slow real-model tests keep all."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_llama_assistant(seed: int = 1):
    """A smaller Llama of the same vocabulary, for Hugging Face's own assisted generation."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**_common(num_hidden_layers=1))).eval()


@contextmanager
def recorded_calls(drafter):
    """Record `(kwargs, output)` of every drafter forward inside the block."""
    calls = []
    handle = drafter.register_forward_hook(lambda _, args, kwargs, out: calls.append((kwargs, out)), with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()
