"""Cost-aware tree shape: measured costs on this device x replayed acceptance -> the tree with the most tokens/s.

Expected throughput of a tree is tau / (draft + verify(budget + 1) + other) per round. verify(N) is measured once per
device, target and dtype (cached). For each candidate shape (SpecBlock blocks, EAGLE-3 depth), calibration rounds run
with a large budget record the drafting time and the acceptance: a node survives a budget-B prune exactly when its
pruning rank is <= B (`DraftTree.keep_rank`), and ranks grow along any path, so each round's accepted length under
budget B is the number of its accepted nodes of rank <= B. No extra decoding is needed per candidate budget.
"""

import hashlib
import itertools
import json
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import DynamicCache, PreTrainedModel

from .tree import ancestor_mask


@dataclass
class BudgetChoice:
    """
    Args:
        budget: the chosen node budget (besides the root).
        expected_tokens_per_s: predicted throughput per candidate budget.
        tau: replayed mean acceptance length per candidate budget.
        verify_ms: measured verify latency per tree size (nodes including the root).
        draft_ms / other_ms: measured per-round drafter and loop overhead during calibration.
        shape: the tree-shape fields this choice was calibrated with (e.g. `{"blocks": 1}`); empty if not varied.
    """

    budget: int
    expected_tokens_per_s: dict[int, float]
    tau: dict[int, float]
    verify_ms: dict[int, float]
    draft_ms: float
    other_ms: float
    shape: dict = field(default_factory=dict)

    @property
    def best_tokens_per_s(self) -> float:
        return self.expected_tokens_per_s[self.budget]


def candidate_shapes(tree_config) -> list[dict]:
    """
    Tree shapes calibration compares around `tree_config`: SpecBlock with 1 or 2 blocks (each later block is one more
    drafter forward), EAGLE-3 with depth 2, 3 or 5 expansion steps (one drafter forward each), plus the given shape.
    """
    if hasattr(tree_config, "blocks"):
        return [{"blocks": blocks} for blocks in sorted({1, 2, tree_config.blocks})]
    return [{"depth": depth} for depth in sorted({2, 3, 5, tree_config.depth})]


def _cache_path(model: PreTrainedModel) -> Path:
    from .models import cache_dir

    device = model.device
    # a CPU forward's cost depends on the threads it may use
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{torch.get_num_threads()}-threads"
    key = json.dumps([name, str(model.dtype), model.config.to_json_string(use_diff=False)], sort_keys=True)
    return cache_dir() / "verify_cost" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


@torch.no_grad()
def measure_verify_ms(
    model: PreTrainedModel, sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32, 48, 64), prefix_length: int = 128,
    repeats: int = 5, use_cache: bool = True,
) -> dict[int, float]:  # fmt: skip
    """
    Median latency in ms of one target forward over a chain-shaped tree of N nodes after a `prefix_length` prefix,
    for each N in `sizes`; cached per device, target config and dtype.
    """
    from .target import cache_argument, tree_attention_mask

    path = _cache_path(model)
    if use_cache and path.is_file():
        cached = {int(k): v for k, v in json.loads(path.read_text()).items()}
        if set(sizes) <= set(cached):
            return {n: cached[n] for n in sizes}
    device = model.device
    vocab = model.config.get_text_config().vocab_size
    prefix = torch.randint(0, vocab, (1, prefix_length), generator=torch.Generator().manual_seed(0)).to(device)
    cache = DynamicCache(config=model.config)
    cache_kwargs = cache_argument(model, cache)
    model(prefix, **cache_kwargs, use_cache=True, logits_to_keep=1)
    cache.activate_past_recording()
    result = {}
    for size in sizes:
        parents = torch.arange(-1, size - 1, device=device)
        depths = torch.arange(size, device=device)
        mask = tree_attention_mask(model, cache, ancestor_mask(parents, depths), depths, None)
        tokens = prefix[:, :size] if size <= prefix_length else torch.zeros(1, size, dtype=torch.long, device=device)
        timings = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            model(
                tokens,
                attention_mask=mask,
                position_ids=(prefix_length + depths)[None],
                **cache_kwargs,
                use_cache=True,
            )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timings.append(1e3 * (time.perf_counter() - start))
            cache.crop(-size)
        result[size] = statistics.median(timings[1:])  # the first call warms up
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def replay_tau(keep_ranks: list[list[int]], budgets: list[int]) -> dict[int, float]:
    """Mean acceptance length each budget would have had over the recorded rounds."""
    return {b: 1 + sum(sum(rank <= b for rank in ranks) for ranks in keep_ranks) / len(keep_ranks) for b in budgets}


def _interpolate(table: dict[int, float], size: int) -> float:
    sizes = sorted(table)
    if size <= sizes[0]:
        return table[sizes[0]]
    for low, high in itertools.pairwise(sizes):
        if size <= high:
            return table[low] + (table[high] - table[low]) * (size - low) / (high - low)
    return table[sizes[-1]] * size / sizes[-1]


def choose_budget(
    verify_ms: dict[int, float], keep_ranks: list[list[int]], draft_ms: float, other_ms: float, budgets: list[int]
) -> BudgetChoice:
    """The budget maximising tau(B) / (draft + verify(B + 1) + other)."""
    tau = replay_tau(keep_ranks, budgets)
    throughput = {b: 1e3 * tau[b] / (draft_ms + _interpolate(verify_ms, b + 1) + other_ms) for b in budgets}
    best = max(budgets, key=lambda b: (throughput[b], -b))
    return BudgetChoice(best, throughput, tau, verify_ms, draft_ms, other_ms)


@torch.no_grad()
def calibrate_budget(
    model: PreTrainedModel, drafter, prompts: list[torch.LongTensor], tree_config,
    budgets: tuple[int, ...] = (2, 4, 6, 8, 12, 16, 24, 32, 48, 64), max_new_tokens: int = 64,
    shapes: list[dict] | None = None,
) -> tuple[object, BudgetChoice, list[BudgetChoice]]:  # fmt: skip
    """
    For each tree shape, decode `prompts` (greedy) with the largest budget to record acceptance by pruning rank and
    the per-round costs; return `tree_config` with the shape and budget that maximise expected tokens/s, that choice,
    and the best choice of every shape (the evidence).

    Args:
        model: a target made speculative-aware with `enable(model)`.
        prompts: token ids `(1, n)` each, on the model's device.
        tree_config: a `SpecBlockTreeConfig` or `Eagle3TreeConfig`; its shape and budget fields are replaced.
        shapes: the field values to compare (default `candidate_shapes(tree_config)`); `[{}]` keeps the shape.
    """
    budget_field = "budget" if hasattr(tree_config, "budget") else "total_tokens"
    verify_ms = measure_verify_ms(model, sizes=tuple(sorted({1, *(b + 1 for b in budgets)})))
    choices = []
    for shape in candidate_shapes(tree_config) if shapes is None else shapes:
        drafter.tree_config = replace(tree_config, **shape, **{budget_field: max(budgets)})
        keep_ranks, draft_s, other_s, rounds = [], 0.0, 0.0, 0
        try:
            for prompt in prompts:
                model.generate(prompt, do_sample=False, max_new_tokens=max_new_tokens, assistant_model=drafter)
                stats = drafter.generation_stats
                keep_ranks += stats.accepted_keep_ranks
                draft_s, other_s, rounds = draft_s + stats.draft_time, other_s + stats.other_time, rounds + stats.rounds
        finally:
            drafter.tree_config = tree_config
        choice = choose_budget(verify_ms, keep_ranks, 1e3 * draft_s / rounds, 1e3 * other_s / rounds, list(budgets))
        choice.shape = shape
        choices.append(choice)
    best = max(choices, key=lambda c: c.best_tokens_per_s)
    return replace(tree_config, **best.shape, **{budget_field: best.budget}), best, choices
