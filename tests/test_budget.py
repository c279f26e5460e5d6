"""Cost-aware tree budget: replayed acceptance, throughput choice, verify-cost measurement and calibration."""

import torch
from conftest import VOCAB, make_eagle3, make_specblock, make_target

import specblock_hf
from specblock_hf.budget import calibrate_budget, choose_budget, measure_verify_ms, replay_tau


def test_replay_counts_accepted_nodes_within_each_budget():
    rounds = [[1, 3, 9], [], [2], [1, 2, 4, 5]]
    tau = replay_tau(rounds, [1, 2, 4, 10])
    assert tau == {1: 1 + 2 / 4, 2: 1 + 4 / 4, 4: 1 + 6 / 4, 10: 1 + 8 / 4}


def test_choice_trades_acceptance_against_verify_cost():
    rounds = [[1, 2, 3, 4, 5, 6, 7, 8]] * 10  # every round accepts 8 nodes of ranks 1..8
    flat = {n: 10.0 for n in range(1, 70)}
    steep = {n: 10.0 * n * n for n in range(1, 70)}
    assert choose_budget(flat, rounds, 1.0, 1.0, [1, 2, 4, 8, 16]).budget == 8  # free nodes: take what is accepted
    assert choose_budget(steep, rounds, 1.0, 1.0, [1, 2, 4, 8, 16]).budget == 1  # costly nodes: smallest tree


def test_verify_cost_is_measured_per_tree_size_and_cached(tmp_path, monkeypatch):
    monkeypatch.setattr("specblock_hf.models.cache_dir", lambda: tmp_path)
    target = make_target("gemma3")  # sliding-window layers included
    costs = measure_verify_ms(target, sizes=(1, 8, 32), prefix_length=16, repeats=2)
    assert set(costs) == {1, 8, 32} and all(ms > 0 for ms in costs.values())
    assert measure_verify_ms(target, sizes=(1, 8), prefix_length=16) == {1: costs[1], 8: costs[8]}  # from the cache


def test_calibration_picks_a_shape_and_budget_and_restores_the_config(tmp_path, monkeypatch):
    monkeypatch.setattr("specblock_hf.models.cache_dir", lambda: tmp_path)
    target = specblock_hf.enable(make_target("llama"))
    drafter = make_specblock(target)
    base = specblock_hf.SpecBlockTreeConfig(blocks=2, beam=2, budget=10)
    drafter.tree_config = base
    prompts = [torch.randint(3, VOCAB, (1, 12), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    config, choice, choices = calibrate_budget(target, drafter, prompts, base, budgets=(2, 4, 8), max_new_tokens=12)
    assert [c.shape for c in choices] == [{"blocks": 1}, {"blocks": 2}]
    assert choice in choices and choice.best_tokens_per_s == max(c.best_tokens_per_s for c in choices)
    assert config.budget == choice.budget in (2, 4, 8) and config.blocks == choice.shape["blocks"]
    assert config.beam == 2 and drafter.tree_config is base
    assert set(choice.expected_tokens_per_s) == {2, 4, 8} and choice.draft_ms > 0


def test_eagle3_calibration_compares_depths(tmp_path, monkeypatch):
    monkeypatch.setattr("specblock_hf.models.cache_dir", lambda: tmp_path)
    target = specblock_hf.enable(make_target("llama"))
    drafter = make_eagle3(target)
    base = specblock_hf.Eagle3TreeConfig(top_k=2, depth=3, total_tokens=8)
    prompt = torch.randint(3, VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))
    config, choice, choices = calibrate_budget(target, drafter, [prompt], base, budgets=(2, 8), max_new_tokens=8)
    assert [c.shape for c in choices] == [{"depth": 2}, {"depth": 3}, {"depth": 5}]
    assert (config.depth, config.total_tokens, config.top_k) == (choice.shape["depth"], choice.budget, 2)
