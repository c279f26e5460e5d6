"""CUDA variants of the equality checks (run where a GPU is present: `python -m pytest -m cuda`)."""

import pytest
import torch
from conftest import VOCAB, make_eagle3, make_specblock, make_target

import specblock_hf
from specblock_hf.divergence import BF16_NEAR_TIE_MARGIN, first_divergence

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
@pytest.mark.parametrize("kind", ["specblock", "eagle3"])
def test_cuda_greedy_fp32_equals_plain(family, kind):
    target = specblock_hf.enable(make_target(family).cuda())
    drafter = (make_specblock if kind == "specblock" else make_eagle3)(target)
    assert drafter.d2t.device.type == "cuda"  # the drafter follows the target
    rng = torch.Generator().manual_seed(0)
    for _ in range(10):
        prompt = torch.randint(3, VOCAB, (1, 16), generator=rng).cuda()
        expected = target.generate(prompt, do_sample=False, max_new_tokens=32, eos_token_id=None)
        actual = target.generate(prompt, do_sample=False, max_new_tokens=32, eos_token_id=None, assistant_model=drafter)
        assert torch.equal(actual, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_low_precision_divergences_are_near_ties(dtype):
    target = specblock_hf.enable(make_target("llama", dtype=dtype).cuda())
    drafter = make_specblock(target)
    rng = torch.Generator().manual_seed(0)
    for _ in range(10):
        prompt = torch.randint(3, VOCAB, (1, 16), generator=rng).cuda()
        plain = target.generate(prompt, do_sample=False, max_new_tokens=32, eos_token_id=None)
        speculative = target.generate(
            prompt, do_sample=False, max_new_tokens=32, eos_token_id=None, assistant_model=drafter
        )
        divergence = first_divergence(target, 16, plain, speculative)
        assert divergence is None or abs(divergence.margin) <= BF16_NEAR_TIE_MARGIN


def test_cuda_sampling_runs_on_device():
    target = specblock_hf.enable(make_target("llama").cuda())
    drafter = make_specblock(target)
    prompt = torch.randint(3, VOCAB, (1, 16)).cuda()
    out = target.generate(
        prompt, do_sample=True, top_p=0.9, max_new_tokens=32, eos_token_id=None, assistant_model=drafter
    )
    assert out.shape == (1, 48) and out.device.type == "cuda"
