"""Greedy speculative output == plain `generate()` output, token for token, in fp32 (SPEC §5).

Over 200 random cases: five model families (Mistral and Gemma3 with sliding windows the trees cross), random
prompts, left padding, tree shapes, both drafters, both `generate()` doors, EOS ids placed so that EOS lands inside
accepted paths, and `max_new_tokens` limits that cut accepted paths. Random drafters give short acceptance; the
oracle double gives long acceptance.
"""

from collections import Counter

import pytest
import torch
from conftest import FAMILIES, VOCAB, make_eagle3, make_specblock, make_target
from oracle import OracleCandidateGenerator

import specblock_hf
from specblock_hf import Eagle3TreeConfig, SpecBlockTreeConfig, generation

CASES_PER_FAMILY = 44


def _randint(rng, low, high):
    return int(torch.randint(low, high + 1, (1,), generator=rng))


def _random_tree_config(drafter, rng):
    if isinstance(drafter, specblock_hf.SpecBlockDrafter):
        return SpecBlockTreeConfig(blocks=_randint(rng, 1, 3), beam=_randint(rng, 1, 6), budget=_randint(rng, 1, 40))
    return Eagle3TreeConfig(top_k=_randint(rng, 1, 6), depth=_randint(rng, 1, 6), total_tokens=_randint(rng, 1, 40))


def run_case(target, drafters, case, rng, monkeypatch, coverage):
    """One random case; returns a description for failure messages."""
    kind = ("specblock", "eagle3", "oracle-specblock", "oracle-eagle3")[case % 4]
    drafter = drafters["eagle3" if kind.endswith("eagle3") else "specblock"]
    prompt = torch.randint(3, VOCAB, (1, _randint(rng, 2, 24)), generator=rng)
    inputs = {"input_ids": prompt}
    if _randint(rng, 0, 3) == 0:  # left padding
        pad = _randint(rng, 1, 5)
        inputs = {
            "input_ids": torch.cat([torch.zeros(1, pad, dtype=torch.long), prompt], dim=1),
            "attention_mask": torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones_like(prompt)], dim=1),
        }
    max_new_tokens = _randint(rng, 1, 40)
    unbounded = target.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=None)
    new = unbounded[0, inputs["input_ids"].shape[1] :]
    eos = int(new[_randint(rng, 0, new.numel() - 1)]) if _randint(rng, 0, 1) else 2
    settings = {"do_sample": False, "max_new_tokens": max_new_tokens, "eos_token_id": eos}
    expected = target.generate(**inputs, **settings)

    tree_config = _random_tree_config(drafter, rng)
    if kind.startswith("oracle"):
        real_for = specblock_hf.generation.candidate_generator_for

        def continuation(sequence):
            out = target.generate(sequence[None], do_sample=False, max_new_tokens=10, eos_token_id=None)
            return out[0, sequence.numel() :]

        monkeypatch.setattr(
            generation, "candidate_generator_for",
            lambda d, c: OracleCandidateGenerator(real_for(d, c), prompt[0], continuation, rng, depth=10),
        )  # fmt: skip
    if case % 2:
        drafter.tree_config = tree_config
        actual = target.generate(**inputs, **settings, assistant_model=drafter)
    else:
        actual = target.generate(
            **inputs, **settings, custom_generate=specblock_hf.generate, drafter=drafter, tree_config=tree_config
        )
    monkeypatch.undo()
    drafter.tree_config = None

    stats = drafter.generation_stats
    description = f"case {case}: {kind}, {tree_config}, inputs={inputs}, settings={settings}"
    assert torch.equal(actual, expected), f"{description}\nexpected {expected}\nactual   {actual}"
    last_accepted = stats.accepted[-1] if stats.accepted else 0
    coverage["cases"] += 1
    coverage["long"] += max(stats.accepted, default=0) >= 4
    coverage["eos_in_path"] += bool(actual[0, -1] == eos) and last_accepted >= 1
    coverage["limit_in_path"] += actual.shape[1] - inputs["input_ids"].shape[1] == max_new_tokens and last_accepted >= 1
    coverage["padded"] += "attention_mask" in inputs


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_plain_generate(family, monkeypatch):
    target = specblock_hf.enable(make_target(family))
    drafters = {"specblock": make_specblock(target), "eagle3": make_eagle3(target)}
    rng = torch.Generator().manual_seed(FAMILIES.index(family))
    coverage = Counter()
    for case in range(CASES_PER_FAMILY):
        run_case(target, drafters, case, rng, monkeypatch, coverage)
    print(family, dict(coverage))
    # the cases must really exercise long paths and stops inside accepted paths, or this test proves little
    assert coverage["long"] >= 5, coverage
    assert coverage["eos_in_path"] >= 2, coverage
    assert coverage["limit_in_path"] >= 2, coverage
    assert coverage["padded"] >= 3, coverage


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_attention_implementations_agree(attn_implementation):
    target = specblock_hf.enable(make_target("gemma3", attn_implementation=attn_implementation))
    drafter = make_specblock(target)
    drafter.tree_config = SpecBlockTreeConfig(blocks=3, beam=4, budget=24)
    prompt = torch.randint(3, VOCAB, (1, 20), generator=torch.Generator().manual_seed(3))
    expected = target.generate(prompt, do_sample=False, max_new_tokens=24, eos_token_id=None)
    actual = target.generate(prompt, do_sample=False, max_new_tokens=24, eos_token_id=None, assistant_model=drafter)
    assert torch.equal(actual, expected)
