"""Lossless sampling: the first two tokens a speculative round emits have exactly the target's joint distribution.

The tree is verified by the real target forward under the real 4D tree mask; its children are the target's likely
tokens (so both acceptance and rejection happen often). Each draw runs `accept` on that verified tree; when the first
token is not a child, the second comes from the next round's root, i.e. the target's own next-token distribution.
The exact joint `p(a) p(b | a)` comes from plain one-token forwards, never from the tree.

Thresholds (20,000 draws, fixed seeds, so the test is deterministic): chi-square p-value > 0.001 over cells with
expected count >= 5 (the rest pooled), and TVD to the exact joint below 1.5x the TVD of 20,000 exact draws + 0.01.
"""

import pytest
import torch
from conftest import VOCAB, make_target
from scipy.stats import chisquare
from transformers import DynamicCache, LogitsProcessorList, StoppingCriteriaList, TopPLogitsWarper

from specblock_hf.target import cache_argument, tree_attention_mask
from specblock_hf.tree import build_tree
from specblock_hf.verification import accept

DRAWS = 20_000


def _peaked_target():
    target = make_target("llama", seed=5)
    target.lm_head.weight.data *= 3  # perplexity ~7 per step: the joint has few enough cells for a chi-square
    return target


def _exact_joint(target, prefix, processors):
    """`(V, V)` joint of the next two tokens after `prefix` (`(1, n)`), from plain forwards."""
    first = torch.softmax(processors(prefix, target(prefix).logits[:, -1].float()), dim=-1)[0]
    extended = torch.cat([prefix.expand(VOCAB, -1), torch.arange(VOCAB)[:, None]], dim=1)  # (V, n+1)
    second_logits = target(extended).logits[:, -1].float()
    second = torch.stack(
        [torch.softmax(processors(extended[i : i + 1], second_logits[i : i + 1]), -1)[0] for i in range(VOCAB)]
    )
    return first[:, None] * second, second


def _verified_tree(target, prefix):
    """A tree of the target's top-3 children, each with its top-3 children, verified in one tree forward."""
    with torch.no_grad():
        probs = torch.softmax(target(prefix).logits[0, -1], -1)
        children = probs.topk(3).indices
        grand = torch.softmax(target(torch.cat([prefix.expand(3, -1), children[:, None]], 1)).logits[:, -1], -1)
        grandchildren = grand.topk(3).indices  # (3, 3)
        tokens = torch.cat([prefix[0, -1:], children, grandchildren.flatten()])
        parents = torch.cat(
            [torch.tensor([-1]), torch.zeros(3, dtype=torch.long), 1 + torch.arange(3).repeat_interleave(3)]
        )
        depths = torch.cat([torch.tensor([0]), torch.ones(3, dtype=torch.long), torch.full((9,), 2)])
        scores = -torch.arange(13, dtype=torch.float) / 100  # any order consistent with depth
        tree = build_tree(tokens, parents, scores, depths, budget=24)
        cache = DynamicCache(config=target.config)
        target(prefix[:, :-1], **cache_argument(target, cache), use_cache=True)
        mask = tree_attention_mask(target, cache, tree.ancestor_mask, tree.depths, None)
        positions = prefix.shape[1] - 1 + tree.depths
        logits = target(
            tree.tokens[None], attention_mask=mask, position_ids=positions[None], **cache_argument(target, cache)
        ).logits[0]
    return tree, logits


@pytest.mark.parametrize(
    "processors", [LogitsProcessorList(), LogitsProcessorList([TopPLogitsWarper(0.9)])], ids=["T=1", "top-p=0.9"]
)
def test_round_emits_target_joint(processors):
    target = _peaked_target()
    prefix = torch.randint(3, VOCAB, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        joint, next_given_first = _exact_joint(target, prefix, processors)
    tree, logits = _verified_tree(target, prefix)
    generator = torch.Generator().manual_seed(1)
    counts = torch.zeros(VOCAB, VOCAB)
    accepted_children = 0
    for _ in range(DRAWS):
        result = accept(tree, logits, prefix, processors, StoppingCriteriaList(), do_sample=True, generator=generator)
        a = int(result.emitted[0])
        if result.emitted.numel() >= 2:
            b = int(result.emitted[1])
            accepted_children += 1
        else:  # the round ended at the root: the next round's root draw is the target's own next token
            b = int(torch.multinomial(next_given_first[a], 1, generator=generator))
        counts[a, b] += 1
    assert 0.2 * DRAWS < accepted_children < 0.98 * DRAWS  # both branches of the walk are exercised

    expected = joint.flatten() * DRAWS
    observed = counts.flatten()
    big = expected >= 5
    f_obs = torch.cat([observed[big], observed[~big].sum()[None]]).double()
    f_exp = torch.cat([expected[big], expected[~big].sum()[None]]).double()
    f_exp = f_exp * f_obs.sum() / f_exp.sum()
    p_value = chisquare(f_obs.numpy(), f_exp.numpy()).pvalue
    tvd = 0.5 * (observed / DRAWS - joint.flatten()).abs().sum()
    exact_draws = torch.bincount(
        torch.multinomial(joint.flatten(), DRAWS, replacement=True, generator=torch.Generator().manual_seed(2)),
        minlength=VOCAB * VOCAB,
    )
    reference_tvd = 0.5 * (exact_draws / DRAWS - joint.flatten()).abs().sum()
    print(
        f"{processors}: chi-square p={p_value:.3f}, TVD={tvd:.4f} (exact sampling: {reference_tvd:.4f}), cells={int(big.sum())}"
    )
    assert p_value > 0.001
    assert tvd < 1.5 * reference_tvd + 0.01


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings", [{"temperature": 1.0}, {"temperature": 1.0, "top_p": 0.9}], ids=["T=1", "top-p=0.9"]
)
def test_generate_first_two_tokens_match_target(settings):
    """End to end through `generate(assistant_model=drafter)`: the first two new tokens follow the exact joint."""
    from conftest import make_specblock

    import specblock_hf

    torch.set_num_threads(1)  # a tiny model: threads only add overhead
    target = specblock_hf.enable(_peaked_target())
    drafter = make_specblock(target)
    drafter.tree_config = specblock_hf.SpecBlockTreeConfig(blocks=2, beam=3, budget=12)
    prefix = torch.randint(3, VOCAB, (1, 10), generator=torch.Generator().manual_seed(0))
    processors = LogitsProcessorList([TopPLogitsWarper(settings["top_p"])] if "top_p" in settings else [])
    with torch.no_grad():
        joint, _ = _exact_joint(target, prefix, processors)
    torch.manual_seed(3)
    counts = torch.zeros(VOCAB * VOCAB)
    for _ in range(DRAWS):
        out = target.generate(
            prefix, do_sample=True, top_k=0, max_new_tokens=2, eos_token_id=None, assistant_model=drafter, **settings
        )
        counts[int(out[0, -2]) * VOCAB + int(out[0, -1])] += 1
    expected = joint.flatten() * DRAWS
    big = expected >= 5
    f_obs = torch.cat([counts[big], counts[~big].sum()[None]]).double()
    f_exp = torch.cat([expected[big], expected[~big].sum()[None]]).double()
    p_value = chisquare(f_obs.numpy(), (f_exp * f_obs.sum() / f_exp.sum()).numpy()).pvalue
    tvd = 0.5 * (counts / DRAWS - joint.flatten()).abs().sum()
    print(f"{settings}: chi-square p={p_value:.3f}, TVD={tvd:.4f}")
    assert p_value > 0.001
    assert tvd < 0.08
