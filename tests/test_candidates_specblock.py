"""SpecBlock tree drafting (SPEC §4): valid trees, rank-class widths and caps, the "give up" rule, block consistency."""

from contextlib import contextmanager

import pytest
import torch
from conftest import HIDDEN, VOCAB, make_specblock, make_target, recorded_calls

from specblock_hf.candidates_specblock import SpecBlockCandidateGenerator, SpecBlockTreeConfig
from specblock_hf.modeling_specblock import SpecBlockDrafter, SpecBlockOutput
from specblock_hf.tree import DraftTree

K, DRAFT_VOCAB, NUM_ENTRIES = 4, 128, 6


@pytest.fixture(scope="module")
def target():
    return make_target("llama")


@pytest.fixture(scope="module")
def drafter(target) -> SpecBlockDrafter:
    """A random drafter with sharpened logits (greedy probabilities ~0.3-0.8), so that trees grow deep."""
    drafter = make_specblock(target, block_size=K, draft_vocab=DRAFT_VOCAB)
    with torch.no_grad():
        drafter.lm_head.weight.mul_(30)
    return drafter


def entries(num_entries: int = NUM_ENTRIES, seed: int = 1):
    """Random prefill entries `(features, next_tokens, positions)` at positions 0..num_entries-1."""
    rng = torch.Generator().manual_seed(seed)
    features = torch.randn(num_entries, 3 * HIDDEN, generator=rng)
    return features, torch.randint(VOCAB, (num_entries,), generator=rng), torch.arange(num_entries)


def committed_generator(drafter: SpecBlockDrafter, tree_config: SpecBlockTreeConfig) -> SpecBlockCandidateGenerator:
    generator = SpecBlockCandidateGenerator(drafter, tree_config)
    generator.append(*entries())
    return generator


def token_paths(tree: DraftTree) -> list[tuple[int, ...]]:
    """The root-to-node token sequence (root excluded) of every node."""
    tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
    paths = [()]
    for node in range(1, tree.num_nodes):
        paths.append((*paths[parents[node]], tokens[node]))
    return paths


def assert_valid_tree(tree: DraftTree, root_token: int, budget: int) -> None:
    assert 1 <= tree.num_nodes <= budget + 1
    assert tree.tokens[0] == root_token and tree.parents[0] == -1 and tree.depths[0] == 0
    parents = tree.parents[1:]
    assert ((parents >= 0) & (parents < torch.arange(1, tree.num_nodes))).all()  # parents first
    assert torch.equal(tree.depths[1:], tree.depths[parents] + 1)
    siblings = list(zip(parents.tolist(), tree.tokens[1:].tolist(), strict=True))
    assert len(set(siblings)) == len(siblings)  # no duplicate (parent, token)


# --- configuration ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"blocks": 0}, "blocks=0"),
        ({"beam": 0}, "beam=0"),
        ({"budget": 0}, "budget=0"),
        ({"width_table": ()}, r"got \(\)"),
        ({"width_table": (2, 0, 6, 4)}, r"got \(2, 0, 6, 4\)"),
        ({"first_slot_caps": ((1.5, 3),)}, r"got \(1.5, 3\)"),
        ({"slot_caps": ((0.9, 0),)}, r"got \(0.9, 0\)"),
    ],
)
def test_tree_config_rejects_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        SpecBlockTreeConfig(**bad)


def test_width_table_must_cover_every_rank_class(drafter):
    # caught at construction, not as an IndexError (a device assert on CUDA) inside `propose()`
    with pytest.raises(ValueError, match=r"width_table \(2, 4\) .* 4 rank classes"):
        SpecBlockCandidateGenerator(drafter, SpecBlockTreeConfig(width_table=(2, 4)))


# --- tree shape ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blocks", [1, 2, 3])
@pytest.mark.parametrize(("beam", "budget"), [(1, 1), (1, 8), (4, 8), (4, 40), (10, 90)])
def test_propose_returns_valid_tree(drafter, blocks, beam, budget):
    config = SpecBlockTreeConfig(blocks=blocks, beam=beam, budget=budget)
    generator = committed_generator(drafter, config)
    cache_length = generator.cache.length
    with recorded_calls(drafter) as calls:
        tree = generator.propose()
    assert_valid_tree(tree, root_token=int(entries()[1][-1]), budget=budget)
    assert len(calls) <= blocks - 1  # block 1 came with the commit forward
    assert int(tree.depths.max()) <= blocks * K
    assert drafter.t2d[tree.tokens[1:]].all()  # drafted ids are mapped to target ids
    assert generator.cache.length == cache_length  # tree blocks never enter the cache
    again = generator.propose()
    assert torch.equal(again.tokens, tree.tokens) and torch.equal(again.parents, tree.parents)


def test_block_one_tree_holds_the_greedy_chain(drafter):
    generator = committed_generator(drafter, SpecBlockTreeConfig(blocks=1, budget=1000))
    tree = generator.propose()
    assert int(tree.depths.max()) == K
    chain = drafter.draft_to_target(generator.root_logits[0].argmax(dim=-1))  # (K,)
    assert tuple(chain.tolist()) in token_paths(tree)
    # the first level holds the root block's slot-0 top-w tokens
    first = drafter.draft_to_target(generator.root_logits[0, 0].topk(int((tree.depths == 1).sum())).indices)
    assert set(tree.tokens[tree.depths == 1].tolist()) == set(first.tolist())


# --- widths, caps and "give up", with controlled heads ---------------------------------------------------------------


def designed_logits(greedy_probs: list[float]) -> torch.Tensor:
    """`(K, Vd)` logits where slot k puts `greedy_probs[k]` on draft id 0 and decreasing mass on ids 1, 2, ..."""
    rest = 0.9 ** torch.arange(DRAFT_VOCAB - 1, dtype=torch.float64)
    rows = []
    for p in greedy_probs:
        probs = torch.cat([torch.tensor([p], dtype=torch.float64), (1 - p) * rest / rest.sum()])
        rows.append(probs.log().float())
    return torch.stack(rows)


@contextmanager
def controlled_heads(drafter: SpecBlockDrafter, per_call: list[tuple[list[float], list[int]]]):
    """
    Drafter forwards (the commit forward, then each later block) return, for every row, slot k with greedy probability
    `greedy_probs[k]` on draft id 0 and rank class `classes[k]`, from `per_call[i]` for the i-th call (the last entry
    repeats). Hidden states and keys stay the drafter's own.
    """
    count = [0]

    def hook(module, args, output):
        greedy_probs, classes = per_call[min(count[0], len(per_call) - 1)]
        count[0] += 1
        B, N = output.logits.shape[:2]
        rank = torch.nn.functional.one_hot(torch.tensor(classes), drafter.config.rank_classes).float()
        return SpecBlockOutput(
            hidden_states=output.hidden_states,
            logits=designed_logits(greedy_probs).expand(B, N, K, DRAFT_VOCAB),
            rank_logits=rank.expand(B, N, K, -1),
            key_values=output.key_values,
        )

    handle = drafter.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def level_sizes(tree: DraftTree) -> list[int]:
    return torch.bincount(tree.depths, minlength=int(tree.depths.max()) + 1)[1:].tolist()


@pytest.mark.parametrize(
    ("width_table", "greedy_probs", "classes", "widths"),
    [
        ((2, 4, 6, 4), [0.3, 0.3, 0.3, 0.3], [0, 1, 2, 3], [2, 4, 6, 4]),  # the table, uncapped
        ((2, 4, 6, 4), [0.96, 0.96, 0.96, 0.96], [2, 2, 2, 0], [3, 2, 2, 2]),  # class 0 / p >= .95: width <= 2
        ((6, 6, 6, 6), [0.96, 0.96, 0.9, 0.5], [1, 1, 1, 1], [3, 2, 3, 6]),  # first-slot cap 3 at p >= .9
        ((6, 6, 6, 6), [0.85, 0.86, 0.7, 0.3], [1, 1, 1, 1], [5, 3, 6, 6]),  # first-slot cap 5 at p >= .8
        ((6, 6, 6, 6), [0.7, 0.5, 0.5, 0.5], [1, 1, 1, 1], [6, 6, 6, 6]),  # cap 8 at p >= .6: the table wins
        ((1, 4, 6, 4), [0.3, 0.3, 0.3, 0.3], [0, 0, 0, 0], [1, 1, 1, 1]),  # a single chain
    ],
)
def test_block_one_widths_follow_table_and_caps(drafter, width_table, greedy_probs, classes, widths):
    config = SpecBlockTreeConfig(blocks=1, budget=1000, width_table=width_table)
    with controlled_heads(drafter, [(greedy_probs, classes)]):
        generator = committed_generator(drafter, config)
        tree = generator.propose()
    assert level_sizes(tree) == widths  # block 1: every node at depth k + 1 hangs under greedy node k - 1
    for depth, width in enumerate(widths, start=1):  # and they are that slot's top-w draft ids
        assert set(tree.tokens[tree.depths == depth].tolist()) == set(
            drafter.draft_to_target(torch.arange(width)).tolist()
        )


def test_later_blocks_use_slot_caps(drafter):
    # block 1: a single chain (class 0 has width 1) whose end launches the only block-2 row; block 2: class 1 (width
    # 6) under the caps of later blocks, where slot 0 gets 2 at p >= .95 (not the first-slot cap 3) and 3 at p >= .85
    config = SpecBlockTreeConfig(blocks=2, beam=10, budget=1000, width_table=(1, 6, 6, 6))
    block_one = ([0.3] * K, [0] * K)
    with controlled_heads(drafter, [block_one, ([0.96, 0.87, 0.5, 0.96], [1] * K)]):
        tree = committed_generator(drafter, config).propose()
    assert level_sizes(tree) == [1, 1, 1, 1, 2, 3, 6, 2]
    with controlled_heads(drafter, [block_one, ([0.87, 0.6, 0.5, 0.5], [1] * K)]):
        tree = committed_generator(drafter, config).propose()
    assert level_sizes(tree) == [1, 1, 1, 1, 3, 6, 6, 6]


@pytest.mark.parametrize(
    ("classes", "chain_end_launched"),
    [
        ([0, 0, 0, 0], True),
        ([0, 1, 0, 0], True),
        ([0, 2, 3, 0], True),  # the first uncertain slot is class 2: keep going
        ([0, 3, 0, 0], False),  # the first uncertain slot is class 3 (miss): give up on the chain end
        ([3, 0, 0, 0], False),
        ([0, 0, 0, 3], True),  # gives up, but the last slot branches: its greedy node is a leaf anyway
    ],
)
def test_pending_leaves_and_give_up_rule(drafter, classes, chain_end_launched):
    """Block 2 extends each branching slot's greedy node and alternatives, and the chain end unless it gives up."""
    config = SpecBlockTreeConfig(blocks=2, beam=100, budget=1000, width_table=(1, 2, 6, 4))
    with controlled_heads(drafter, [([0.3] * K, classes)]):
        generator = committed_generator(drafter, config)
        with recorded_calls(drafter) as calls:
            generator.propose()
    ((kwargs, _),) = calls
    launched = {
        (int((generator.root_hidden[0] == condition).all(dim=-1).nonzero()), int(token))
        for condition, token in zip(kwargs["condition"][0], kwargs["token_ids"][0], strict=True)
    }  # (root slot whose state conditions the row, the leaf's token)
    ranked = drafter.draft_to_target(torch.arange(DRAFT_VOCAB)).tolist()  # every slot ranks draft ids 0, 1, 2, ...
    expected = {
        (k, ranked[r]) for k, c in enumerate(classes) if config.width_table[c] > 1 for r in range(config.width_table[c])
    }
    if chain_end_launched:
        expected.add((K - 1, ranked[0]))
    assert launched == expected
    assert kwargs["token_ids"].shape[1] == len(expected)  # each leaf once


# --- consistency of the blocks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", [[6], [4, 2], [1, 1, 4], [2, 3, 1]])
def test_appends_in_pieces_equal_one_append(drafter, split):
    features, tokens, positions = entries()
    whole = SpecBlockCandidateGenerator(drafter, SpecBlockTreeConfig())
    whole.append(features, tokens, positions)
    pieces = SpecBlockCandidateGenerator(drafter, SpecBlockTreeConfig())
    start = 0
    for size in split:
        pieces.append(features[start : start + size], tokens[start : start + size], positions[start : start + size])
        start += size
    assert pieces.cache.length == whole.cache.length == NUM_ENTRIES * K  # every entry stores its K slots
    for (key, value), (whole_key, whole_value) in zip(pieces.cache.past(), whole.cache.past(), strict=True):
        torch.testing.assert_close(key, whole_key, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(value, whole_value, rtol=1e-5, atol=1e-5)
    for name in ("root_hidden", "root_logits", "root_rank_logits"):
        torch.testing.assert_close(getattr(pieces, name), getattr(whole, name), rtol=1e-5, atol=1e-5)
    assert torch.equal(pieces.root_token, whole.root_token)


def test_append_positions_and_block_positions(drafter):
    generator = SpecBlockCandidateGenerator(drafter, SpecBlockTreeConfig(blocks=3, beam=4, budget=200))
    features, tokens, positions = entries()
    with recorded_calls(drafter) as calls:
        generator.append(features, tokens, positions + 10)
        generator.propose()
    slot_positions = positions[:, None] + 10 + 1 + torch.arange(K)  # slot k of an entry at P sits at P + 1 + k
    assert torch.equal(calls[0][0]["position_ids"][0], slot_positions)
    assert len(calls) == 3
    for kwargs, _ in calls[1:]:  # later blocks reuse the root block's ids
        assert (kwargs["position_ids"][0] == slot_positions[-1]).all()


def single_row(drafter, condition, token, positions, past):
    """One block drafted alone: it attends to all of `past` and causally to its own slots."""
    past_len = past[0][0].shape[2]
    mask = torch.cat([torch.ones(K, past_len, dtype=torch.bool), torch.ones(K, K, dtype=torch.bool).tril()], dim=1)
    return drafter(
        condition=condition[None, None], token_ids=token.view(1, 1), position_ids=positions.view(1, 1, K),
        attention_mask=mask[None], past_key_values=past, condition_is_feature=False,
    )  # fmt: skip


def slice_past(past, stop: int):
    return [(key[:, :, :stop], value[:, :, :stop]) for key, value in past]


@torch.no_grad()
def test_later_block_rows_equal_blocks_drafted_alone(drafter):
    """
    A block-2 row launched from root slot s sees the committed entries and the root block's slots <= s; a block-3 row
    launched from (block-2 row r, slot s') also sees row r's slots <= s'. Drafting each row alone against exactly that
    past (sliced, not masked) gives the same logits, and its greedy chain hangs under its leaf in the tree.
    """
    generator = committed_generator(drafter, SpecBlockTreeConfig(blocks=3, beam=10, budget=1000))
    committed = generator.cache.past()
    length, positions = generator.cache.length, generator.root_slot_positions
    with recorded_calls(drafter) as calls:
        tree = generator.propose()
    (kwargs_2, out_2), (kwargs_3, out_3) = calls
    assert kwargs_3["token_ids"].shape[1] == 10  # block-3 rows come from several block-2 rows and slots
    paths = set(token_paths(tree))
    root_chain = drafter.draft_to_target(generator.root_logits[0].argmax(dim=-1)).tolist()

    row_past, row_paths = [], []
    for row, (condition, token) in enumerate(zip(kwargs_2["condition"][0], kwargs_2["token_ids"][0], strict=True)):
        slot = int((generator.root_hidden[0] == condition).all(dim=-1).nonzero())
        past = slice_past(committed, length - K + slot + 1)
        alone = single_row(drafter, condition, token, positions, past)
        torch.testing.assert_close(out_2.logits[0, row], alone.logits[0, 0], rtol=1e-5, atol=1e-5)
        leaf_path = (*root_chain[:slot], int(token))
        greedy = drafter.draft_to_target(out_2.logits[0, row].argmax(dim=-1)).tolist()
        assert (*leaf_path, *greedy) in paths
        row_past.append(past)
        row_paths.append([(*leaf_path, *greedy[: k + 1]) for k in range(K)])

    for row, (condition, token) in enumerate(zip(kwargs_3["condition"][0], kwargs_3["token_ids"][0], strict=True)):
        parent_row, slot = ((out_2.hidden_states[0] == condition).all(dim=-1)).nonzero()[0].tolist()
        own = [
            (
                key[:, :, parent_row * K : parent_row * K + slot + 1],
                value[:, :, parent_row * K : parent_row * K + slot + 1],
            )
            for key, value in out_2.key_values
        ]
        past = [
            (torch.cat([k, own_k], dim=2), torch.cat([v, own_v], dim=2))
            for (k, v), (own_k, own_v) in zip(row_past[parent_row], own, strict=True)
        ]
        alone = single_row(drafter, condition, token, positions, past)
        torch.testing.assert_close(out_3.logits[0, row], alone.logits[0, 0], rtol=1e-5, atol=1e-5)
        leaf_path = (*row_paths[parent_row][slot][:-1], int(token))
        greedy = drafter.draft_to_target(out_3.logits[0, row].argmax(dim=-1)).tolist()
        assert (*leaf_path, *greedy) in paths
