"""bf16 greedy: a multi-token verify forward does not reproduce a one-token forward bit for bit, so speculative greedy
output may leave plain greedy output, but only where the target's top two logits are a numerical near-tie.

At the first divergent token we recompute the target's logits over the common prefix and require
|logit(plain token) - logit(speculative token)| <= BF16_NEAR_TIE_MARGIN (0.25, a few bf16 ulps at logit scale 8-16).
"""

import pytest
import torch
from conftest import VOCAB, make_specblock, make_target

import specblock_hf
from specblock_hf.divergence import BF16_NEAR_TIE_MARGIN, first_divergence

PROMPTS = 30


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_bf16_divergences_are_near_ties(family):
    target = specblock_hf.enable(make_target(family, dtype=torch.bfloat16))
    drafter = make_specblock(target)
    drafter.tree_config = specblock_hf.SpecBlockTreeConfig(blocks=2, beam=4, budget=20)
    rng = torch.Generator().manual_seed(0)
    margins = []
    for _ in range(PROMPTS):
        prompt = torch.randint(3, VOCAB, (1, 12), generator=rng)
        plain = target.generate(prompt, do_sample=False, max_new_tokens=40, eos_token_id=None)
        speculative = target.generate(
            prompt, do_sample=False, max_new_tokens=40, eos_token_id=None, assistant_model=drafter
        )
        divergence = first_divergence(target, prompt.shape[1], plain, speculative)
        if divergence is None:
            assert torch.equal(plain, speculative)
        else:
            margins.append(divergence.margin)
    print(
        f"{family} bf16: {len(margins)}/{PROMPTS} outputs diverge; largest |margin| {max(map(abs, margins), default=0):.4f}"
    )
    assert all(abs(margin) <= BF16_NEAR_TIE_MARGIN for margin in margins), margins


def test_divergence_reports_margin_of_a_real_difference():
    """A changed token that is no tie is reported with a large margin (the check can fail)."""
    target = make_target("llama")
    prompt = torch.randint(3, VOCAB, (1, 12), generator=torch.Generator().manual_seed(1))
    plain = target.generate(prompt, do_sample=False, max_new_tokens=10, eos_token_id=None)
    logits = target(plain[:, :15]).logits[0, -1]
    worst = int(logits.argmin())
    altered = plain.clone()
    altered[0, 15] = worst
    divergence = first_divergence(target, 12, plain, altered)
    assert divergence.index == 3 and divergence.actual_token == worst
    assert not divergence.is_near_tie()
    assert first_divergence(target, 12, plain, plain) is None
