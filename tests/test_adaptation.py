"""Online adaptation (SPEC §8): rows and labels, the update, the bandit's decisions, rollback, and losslessness."""

import pytest
import torch
from conftest import FAMILIES, VOCAB, make_eagle3, make_specblock, make_target
from scipy.stats import chisquare

import specblock_hf
from specblock_hf import AdaptationConfig, OnlineAdaptation

# adapt as often and as hard as possible, so that drafts change between rounds
EAGER = AdaptationConfig(mode="always", check_every=1, min_new_rows=1, steps=4, learning_rate=0.5, weight_decay=0.0)
EAGER_BANDIT = AdaptationConfig(
    mode="bandit", check_every=1, min_new_rows=1, steps=4, learning_rate=0.5, weight_decay=0.0, prior_gain=10.0,
    horizon_tokens=10**9, rollback_z=0.5, explore_every=1,
)  # fmt: skip  # also rolls back, resets and swaps in the pristine head for whole windows


def _states(n, K, hidden=64, seed=0):
    return torch.randn(n, K, hidden, generator=torch.Generator().manual_seed(seed))


def test_slot_k_of_entry_t_is_labelled_by_token_t_plus_k_plus_2():
    drafter = make_specblock(make_target("llama"))  # K = 4
    adaptation = OnlineAdaptation(drafter)
    in_vocab = drafter.draft_to_target(torch.arange(drafter.config.draft_vocab_size))
    sequence = in_vocab[torch.arange(20) % 50]  # every token is in the draft vocabulary
    sequence[13] = int((~drafter.t2d).nonzero()[0])  # ... but this one
    adaptation.begin(prompt_length=8, max_new_tokens=32)
    adaptation.observe(_states(4, 4), torch.tensor([5, 6, 7, 8]))
    adaptation._label(sequence[:12])  # entries 5 and 6 have all labels (up to index 11); 7 and 8 wait
    expected = [(t, k) for t in (5, 6) for k in range(4) if 8 <= t + k + 2 < 12]  # prompt labels skipped
    assert adaptation.filled == len(expected) == 7
    labels = adaptation.labels[: adaptation.filled]
    assert drafter.draft_to_target(labels).tolist() == [int(sequence[t + k + 2]) for t, k in expected]
    assert adaptation.slots[: adaptation.filled].tolist() == [k for _, k in expected]
    normed = drafter.norm(_states(4, 4)).float()
    assert torch.equal(adaptation.states[0], normed[0, 1])  # entry 5, slot 1 -> token 8
    adaptation._label(sequence, final=True)  # the rest, without index 13 (not in the draft vocabulary)
    assert adaptation.filled == 7 + 4 + 4 - 1 and not adaptation._call["pending"]


def test_buffer_keeps_the_newest_rows():
    drafter = make_eagle3(make_target("llama"))
    adaptation = OnlineAdaptation(drafter, AdaptationConfig(buffer_rows=6))
    for step in range(3):
        adaptation._push(torch.full((4, 64), float(step)), torch.arange(4), torch.zeros(4, dtype=torch.long))
    assert adaptation.filled == 6 and sorted(adaptation.order.tolist()) == list(range(6, 12))
    assert sorted(adaptation.states[:, 0].tolist()) == [1.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    adaptation._push(torch.arange(10.0)[:, None].expand(10, 64), torch.arange(10), torch.zeros(10, dtype=torch.long))
    assert sorted(adaptation.order.tolist()) == list(range(16, 22))  # more rows than fit: the newest 6
    assert sorted(adaptation.states[:, 0].tolist()) == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]


def _fill(adaptation, labels_for, rows=200, seed=0):
    """Rows whose labels `labels_for(states)` picks (slot 0)."""
    states = torch.randn(rows, adaptation.states.shape[1], generator=torch.Generator().manual_seed(seed))
    adaptation._push(states, labels_for(states), torch.zeros(rows, dtype=torch.long))


def _ready(adaptation, tau_rounds=(1,) * 8):
    adaptation.begin(prompt_length=4, max_new_tokens=128)
    adaptation.round_seconds = 0.05
    adaptation.recent_rounds.extend(tau_rounds)


def _argmax_of(head):
    return lambda states: (states @ head.float().T).argmax(-1)


def test_bandit_does_not_update_at_the_ceiling():
    drafter = make_specblock(make_target("llama"))
    adaptation = OnlineAdaptation(drafter, AdaptationConfig(min_new_rows=1, horizon_tokens=10**6))
    _ready(adaptation)
    _fill(adaptation, _argmax_of(drafter.lm_head.weight))  # the head already predicts every fresh row
    adaptation._check()
    assert adaptation._fresh_accuracy()[0] == 1.0
    assert adaptation.stats.skipped == {"at ceiling": 1} and adaptation.stats.updates == 0


def test_bandit_updates_only_when_the_gain_pays_for_the_cost():
    drafter = make_specblock(make_target("llama"))
    pristine = drafter.lm_head.weight.detach().clone()
    other_head = torch.randn(pristine.shape, generator=torch.Generator().manual_seed(3))  # labels another head picks
    adaptation = OnlineAdaptation(drafter, AdaptationConfig(min_new_rows=1, horizon_tokens=0, learning_rate=0.05))
    _ready(adaptation)
    adaptation._call["generated"] = 128  # nothing left to serve: no gain can pay
    _fill(adaptation, _argmax_of(other_head), rows=1000)
    adaptation._check()
    assert adaptation.stats.skipped == {"gain below cost": 1} and torch.equal(drafter.lm_head.weight, pristine)

    adaptation.config = AdaptationConfig(min_new_rows=1, horizon_tokens=100_000, learning_rate=0.05)  # a long stream
    adaptation._check()
    assert adaptation.stats.updates == 1 and not torch.equal(drafter.lm_head.weight, pristine)
    assert adaptation.cost_estimate > 0 and adaptation.pending is not None

    _fill(adaptation, _argmax_of(other_head), rows=300, seed=4)  # fresh rows, never trained on, judge the update
    adaptation._check()
    assert adaptation.stats.rollbacks == 0 and adaptation.stats.updates == 2  # kept; the next update followed


def test_an_update_that_hurts_the_fresh_rows_is_rolled_back():
    drafter = make_specblock(make_target("llama"))
    pristine = drafter.lm_head.weight.detach().clone()
    adaptation = OnlineAdaptation(drafter, AdaptationConfig(min_new_rows=1, learning_rate=0.5, horizon_tokens=10**6))
    _ready(adaptation)
    noise = torch.Generator().manual_seed(1)
    _fill(adaptation, lambda s: torch.randint(0, 128, (s.shape[0],), generator=noise), rows=400)  # noisy labels
    adaptation._check()  # ... trained on
    assert adaptation.stats.updates == 1 and not torch.equal(drafter.lm_head.weight, pristine)
    _fill(adaptation, _argmax_of(pristine), rows=200, seed=2)  # fresh rows the head before the update got right
    adaptation.config = AdaptationConfig(min_new_rows=10**6)  # judge only
    adaptation._check()
    assert adaptation.stats.rollbacks == 1 and adaptation.stats.updates == 0
    assert torch.equal(drafter.lm_head.weight, pristine) and not adaptation.delta.any()


def _rounds(mean_accepted, n=64):
    """`n` rounds with this mean accepted length (alternating around it)."""
    return [mean_accepted + (0.5 if i % 2 else -0.5) for i in range(n)]


def test_pristine_windows_interleave_and_measure_the_gain():
    drafter = make_specblock(make_target("llama"))
    pristine = drafter.lm_head.weight.detach().clone()
    config = AdaptationConfig(min_new_rows=10**6, explore_every=2, check_every=4)
    adaptation = OnlineAdaptation(drafter, config)
    adaptation._restore(torch.randn(adaptation.delta.shape, generator=torch.Generator().manual_seed(5)))
    adapted = drafter.lm_head.weight.detach().clone()
    adaptation.begin(prompt_length=4, max_new_tokens=10**6)
    sequence = torch.arange(8)
    heads = []
    for _ in range(4 * 8):
        heads.append("pristine" if torch.equal(drafter.lm_head.weight, pristine) else "adapted")
        adaptation.after_round(sequence, accepted=1 if heads[-1] == "adapted" else 0, emitted=1)
    windows = [heads[i] for i in range(0, 32, 4)]  # a window = the 4 rounds between two checks
    assert windows == ["adapted"] * 2 + ["pristine", "adapted"] * 3  # one window in every `explore_every`
    assert all(heads[i : i + 4] == [heads[i]] * 4 for i in range(0, 32, 4))
    assert adaptation.stats.exploration_rounds == 12 and list(adaptation.ab_rounds["pristine"]) == [0] * 12
    adaptation.end(sequence)
    assert torch.equal(drafter.lm_head.weight, adapted)
    for rounds in adaptation.ab_rounds.values():
        rounds.clear()
    adaptation.ab_rounds["adapted"].extend(_rounds(1.5))
    adaptation.ab_rounds["pristine"].extend(_rounds(1.0))
    adaptation._close_window()
    assert adaptation.stats.gain_over_pristine == pytest.approx(0.5, abs=0.02) and adaptation.stats.resets == 0


def test_a_delta_that_accepts_less_than_the_pristine_head_is_dropped():
    drafter = make_specblock(make_target("llama"))
    pristine = drafter.lm_head.weight.detach().clone()
    adaptation = OnlineAdaptation(drafter, AdaptationConfig(min_new_rows=10**6))
    adaptation._restore(torch.randn(adaptation.delta.shape, generator=torch.Generator().manual_seed(5)))
    adaptation.ab_rounds["adapted"].extend(_rounds(0.9))
    adaptation.ab_rounds["pristine"].extend(_rounds(1.0))
    adaptation._close_window()
    assert adaptation.stats.resets == 0  # 0.1 fewer accepted per round: 1.1 standard errors, not clear
    adaptation.ab_rounds["adapted"].extend(_rounds(0.5))
    adaptation._close_window()
    assert adaptation.stats.resets == 1 and torch.equal(drafter.lm_head.weight, pristine)
    assert adaptation.prior_gain == AdaptationConfig().prior_gain / 2 and not adaptation.delta_active
    assert not adaptation.ab_rounds["adapted"] and adaptation.stats.gain_over_pristine < 0  # the verdict holds
    assert adaptation._expected_savings() == 0.0  # ... so no update until untrained rows make it stale


def test_always_updates_at_every_check_without_judging():
    drafter = make_eagle3(make_target("llama"))
    adaptation = OnlineAdaptation(drafter, AdaptationConfig(mode="always", min_new_rows=50))
    _ready(adaptation)
    for seed in range(3):
        _fill(adaptation, _argmax_of(torch.randn(drafter.lm_head.weight.shape)), rows=60, seed=seed)
        adaptation._check()
    assert adaptation.stats.updates == 3 and adaptation.pending is None and adaptation.stats.gain_over_pristine is None


def test_reset_detach_save_and_load(tmp_path):
    drafter = make_eagle3(make_target("llama"))
    pristine = drafter.lm_head.weight.detach().clone()
    adaptation = specblock_hf.adaptation.resolve_adaptation(drafter, "bandit")
    assert drafter.adaptation is adaptation
    with torch.no_grad():
        adaptation.delta += 0.25
    adaptation._write_head()
    adaptation.save(tmp_path / "delta.safetensors")
    adaptation.reset()
    assert torch.equal(drafter.lm_head.weight, pristine) and adaptation.filled == 0
    adaptation.load(tmp_path / "delta.safetensors")
    assert torch.allclose(drafter.lm_head.weight.float(), pristine.float() + 0.25)
    adaptation.detach()
    assert torch.equal(drafter.lm_head.weight, pristine) and drafter.adaptation is None
    with pytest.raises(ValueError, match="mode must be one of"):
        AdaptationConfig(mode="sometimes")


@pytest.mark.parametrize("config", [EAGER, EAGER_BANDIT], ids=["always", "bandit"])
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_output_is_unchanged_while_the_drafter_adapts(family, config):
    target = specblock_hf.enable(make_target(family))
    rng = torch.Generator().manual_seed(7)
    for drafter in (make_specblock(target), make_eagle3(target)):
        pristine = drafter.lm_head.weight.detach().clone()
        drafter.tree_config = (
            specblock_hf.SpecBlockTreeConfig(blocks=2, beam=3, budget=12)
            if isinstance(drafter, specblock_hf.SpecBlockDrafter)
            else specblock_hf.Eagle3TreeConfig(top_k=3, depth=3, total_tokens=12)
        )
        for call in range(6):
            prompt = torch.randint(3, VOCAB, (1, int(torch.randint(4, 20, (1,), generator=rng))), generator=rng)
            settings = {"do_sample": False, "max_new_tokens": 40, "eos_token_id": None}
            expected = target.generate(prompt, **settings)
            if call % 2:
                out = target.generate(prompt, **settings, assistant_model=drafter, adaptation=config)
            else:
                out = target.generate(
                    prompt, **settings, custom_generate=specblock_hf.generate, drafter=drafter, adaptation=config
                )
            assert torch.equal(out, expected), (family, type(drafter).__name__, call)
        stats = drafter.adaptation.stats
        assert stats.updates + stats.rollbacks >= 10 and stats.rows > 50, stats
        assert drafter.generation_stats.adapt_time > 0
        if config.mode == "always":
            assert not torch.equal(drafter.lm_head.weight, pristine)  # the drafts really came from a changing head
        else:
            assert stats.exploration_rounds > 0


def test_adaptation_keyword_needs_one_of_our_drafters():
    target = specblock_hf.enable(make_target("llama"))
    with pytest.raises(ValueError, match="adaptation= applies to SpecBlock"):
        target.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2, adaptation="bandit")


def test_sampling_keeps_the_target_distribution_while_the_drafter_adapts():
    """First two tokens of 3,000 sampled calls, the head updated between rounds and calls: chi-square vs the exact joint."""
    torch.set_num_threads(1)
    target = specblock_hf.enable(make_target("llama", seed=5))
    target.lm_head.weight.data *= 3  # a peaked target: few enough joint cells for a chi-square
    drafter = make_specblock(target)
    drafter.tree_config = specblock_hf.SpecBlockTreeConfig(blocks=2, beam=3, budget=12)
    prefix = torch.randint(3, VOCAB, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = torch.softmax(target(prefix).logits[0, -1], -1)
        extended = torch.cat([prefix.expand(VOCAB, -1), torch.arange(VOCAB)[:, None]], dim=1)
        second = torch.softmax(target(extended).logits[:, -1], -1)
    joint = (first[:, None] * second).flatten()
    draws, counts = 3000, torch.zeros(VOCAB * VOCAB)
    torch.manual_seed(3)
    for _ in range(draws):
        out = target.generate(
            prefix, do_sample=True, top_k=0, max_new_tokens=2, eos_token_id=None, assistant_model=drafter,
            adaptation=EAGER,
        )  # fmt: skip
        counts[int(out[0, -2]) * VOCAB + int(out[0, -1])] += 1
    assert drafter.adaptation.stats.updates > 100
    expected = joint * draws
    big = expected >= 5
    observed = torch.cat([counts[big], counts[~big].sum()[None]]).double()
    predicted = torch.cat([expected[big], expected[~big].sum()[None]]).double()
    p_value = chisquare(observed.numpy(), (predicted * observed.sum() / predicted.sum()).numpy()).pvalue
    assert p_value > 0.001, p_value
