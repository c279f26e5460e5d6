"""DraftTree finalisation (SPEC §4): sibling dedup with re-parenting, budget pruning, ancestor mask and paths."""

import random

import pytest
import torch

from specblock_hf.tree import DraftTree, ancestor_mask, build_tree, dedup_siblings


def candidates(rows: list[tuple[int, int, float]]):
    """Candidate tensors from `(parent, token, score)` rows; the root (token 0, score 0) is prepended as node 0."""
    parents, tokens, scores, depths = [-1], [0], [0.0], [0]
    for parent, token, score in rows:
        parents.append(parent)
        tokens.append(token)
        scores.append(score)
        depths.append(depths[parent] + 1)
    return torch.tensor(tokens), torch.tensor(parents), torch.tensor(scores), torch.tensor(depths)


def token_paths(tokens: torch.Tensor, parents: torch.Tensor, nodes=None) -> list[tuple[int, ...]]:
    """The root-to-node token sequence (root excluded) of each node in `nodes` (default: all)."""
    tokens, parents = tokens.tolist(), parents.tolist()

    def path(node: int) -> tuple[int, ...]:
        return () if parents[node] < 0 else (*path(parents[node]), tokens[node])

    return [path(node) for node in (range(len(tokens)) if nodes is None else nodes)]


def assert_valid_tree(tree: DraftTree) -> None:
    """Root first, parents before children, consistent depths, no two siblings with the same token."""
    n = tree.num_nodes
    assert tree.parents[0] == -1 and tree.depths[0] == 0
    child = torch.arange(1, n)
    assert ((tree.parents[1:] >= 0) & (tree.parents[1:] < child)).all()
    assert torch.equal(tree.depths[1:], tree.depths[tree.parents[1:]] + 1)
    assert torch.equal(tree.depths, torch.sort(tree.depths).values)  # laid out level by level
    siblings = list(zip(tree.parents[1:].tolist(), tree.tokens[1:].tolist(), strict=True))
    assert len(set(siblings)) == len(siblings)
    assert tree.ancestor_mask.shape == (n, n)


# --- dedup -----------------------------------------------------------------------------------------------------------

# the loser of (root, 5) has children that collide with the winner's, whose children collide in turn
CASCADE = [
    (0, 5, -1.0),  # 1: loses to 2
    (0, 5, -0.5),  # 2: wins (root, 5)
    (1, 7, -1.2),  # 3: re-parented onto 2, then wins (2, 7) against 4
    (2, 7, -2.0),  # 4: loses to 3
    (3, 9, -1.5),  # 5: wins (3, 9) against 6
    (4, 9, -2.5),  # 6: re-parented from 4 onto 3, loses to 5
    (4, 8, -3.0),  # 7: re-parented from 4 onto 3
    (0, 6, -0.8),  # 8: a competitor that outscores the loser 1 but not the winner 2
]


def test_dedup_keeps_the_higher_score_and_reparents_cascading():
    tokens, parents, scores, depths = candidates(CASCADE)
    new_parents, keep = dedup_siblings(tokens, parents, scores, depths)
    assert keep.nonzero().squeeze(1).tolist() == [0, 2, 3, 5, 7, 8]
    assert new_parents[[2, 3, 5, 7, 8]].tolist() == [0, 2, 3, 3, 0]


def test_build_tree_dedups_cascading():
    tree = build_tree(*candidates(CASCADE), budget=100)
    assert_valid_tree(tree)
    assert sorted(token_paths(tree.tokens, tree.parents)) == [(), (5,), (5, 7), (5, 7, 8), (5, 7, 9), (6,)]


def test_merged_node_keeps_the_winners_score():
    # budget 1 keeps the best node: (root, 5) at -0.5; had the loser's -1.0 survived, (root, 6) at -0.8 would win
    tree = build_tree(*candidates(CASCADE), budget=1)
    assert tree.tokens.tolist() == [0, 5]
    # budget 4: 5 (-0.5), 6 (-0.8), 5-7 (-1.2), 5-7-9 (-1.5)
    tree = build_tree(*candidates(CASCADE), budget=4)
    assert sorted(token_paths(tree.tokens, tree.parents)) == [(), (5,), (5, 7), (5, 7, 9), (6,)]


def test_dedup_of_a_later_sibling_with_higher_score():
    # the winner comes after the loser in the candidate order and the loser's child must follow it
    tokens, parents, scores, depths = candidates([(0, 3, -2.0), (1, 4, -2.5), (0, 3, -0.1)])
    tree = build_tree(tokens, parents, scores, depths, budget=10)
    assert_valid_tree(tree)
    assert sorted(token_paths(tree.tokens, tree.parents)) == [(), (3,), (3, 4)]


# --- pruning ---------------------------------------------------------------------------------------------------------


def test_prune_keeps_best_nodes_with_their_ancestors():
    rows = [(0, 1, -0.1), (1, 2, -0.2), (2, 3, -0.3), (0, 4, -0.25), (4, 5, -2.0), (3, 6, -0.35)]
    tree = build_tree(*candidates(rows), budget=4)
    assert_valid_tree(tree)
    assert sorted(token_paths(tree.tokens, tree.parents)) == [(), (1,), (1, 2), (1, 2, 3), (4,)]


def test_prune_with_ties_between_parent_and_child():
    # a child whose token had probability 1 scores like its parent; the parent must still come first
    rows = [(0, 1, -1.0), (1, 2, -1.0), (2, 3, -1.0), (0, 4, -1.0)]
    for budget in range(1, 5):
        tree = build_tree(*candidates(rows), budget=budget)
        assert_valid_tree(tree)
        assert tree.num_nodes == budget + 1


def test_budget_one_keeps_the_best_first_level_node():
    tree = build_tree(*candidates([(0, 1, -2.0), (0, 2, -0.5), (2, 3, -0.6)]), budget=1)
    assert tree.tokens.tolist() == [0, 2] and tree.parents.tolist() == [-1, 0] and tree.depths.tolist() == [0, 1]
    assert tree.ancestor_mask.tolist() == [[True, False], [True, True]]
    assert tree.paths().tolist() == [[0, 1]]


def test_root_only_tree():
    tree = build_tree(torch.tensor([42]), torch.tensor([-1]), torch.tensor([0.0]), torch.tensor([0]), budget=5)
    assert tree.tokens.tolist() == [42] and tree.parents.tolist() == [-1] and tree.depths.tolist() == [0]
    assert tree.ancestor_mask.tolist() == [[True]]
    assert tree.paths().tolist() == [[0]]
    alone = DraftTree.root(torch.tensor([42]))
    for name in ("tokens", "parents", "depths", "ancestor_mask"):
        assert torch.equal(getattr(alone, name), getattr(tree, name)), name


# --- against a brute-force reference on random trees -----------------------------------------------------------------


def random_candidates(rng: random.Random, num_nodes: int, vocab: int):
    """Random candidates with parents first and cumulative (monotone, distinct) scores; few tokens, many collisions."""
    rows, scores = [], [0.0]
    for node in range(1, num_nodes):
        parent = rng.randrange(node)
        scores.append(scores[parent] - rng.uniform(0.01, 2.0))
        rows.append((parent, rng.randrange(vocab), scores[node]))
    return candidates(rows)


def reference_tree(tokens, parents, scores, depths, budget: int) -> list[tuple[int, ...]]:
    """SPEC §4 literally: merge same-token siblings level by level into the best-scoring one, keep the `budget` best."""
    tokens, parents, scores, depths = (t.tolist() for t in (tokens, parents, scores, depths))
    canonical, new_parents = list(range(len(tokens))), list(parents)
    for depth in range(1, max(depths) + 1):
        groups = {}
        for node in (i for i, d in enumerate(depths) if d == depth):
            new_parents[node] = canonical[parents[node]]
            groups.setdefault((new_parents[node], tokens[node]), []).append(node)
        for members in groups.values():
            winner = max(members, key=lambda i: scores[i])
            for node in members:
                canonical[node] = winner
    kept = [i for i in range(1, len(tokens)) if canonical[i] == i]
    chosen = sorted(kept, key=lambda i: -scores[i])[:budget]
    return sorted(token_paths(torch.tensor(tokens), torch.tensor(new_parents), [0, *chosen]))


def reference_ancestors(parents: list[int]) -> list[list[bool]]:
    n = len(parents)
    mask = [[False] * n for _ in range(n)]
    for i in range(n):
        node = i
        while node >= 0:
            mask[i][node] = True
            node = parents[node]
    return mask


def reference_paths(parents: list[int], depths: list[int]) -> list[list[int]]:
    leaves = [i for i in range(len(parents)) if i not in parents[1:]]
    rows = []
    for leaf in leaves:
        path = [leaf]
        while parents[path[-1]] >= 0:
            path.append(parents[path[-1]])
        rows.append(path[::-1] + [-1] * (max(depths) + 1 - len(path)))
    return rows


@pytest.mark.parametrize("seed", range(200))
def test_build_tree_matches_reference(seed):
    rng = random.Random(seed)
    num_nodes = rng.randrange(1, 40)
    tokens, parents, scores, depths = random_candidates(rng, num_nodes, vocab=rng.choice([2, 3, 6]))
    budget = rng.randrange(1, num_nodes + 2)
    tree = build_tree(tokens, parents, scores, depths, budget=budget)
    assert_valid_tree(tree)
    assert tree.num_nodes - 1 <= budget
    assert sorted(token_paths(tree.tokens, tree.parents)) == reference_tree(tokens, parents, scores, depths, budget)


@pytest.mark.parametrize("seed", range(200))
def test_ancestor_mask_and_paths_match_reference(seed):
    rng = random.Random(seed)
    num_nodes = rng.randrange(1, 30)
    parents, depths = [-1], [0]
    for node in range(1, num_nodes):
        parents.append(rng.randrange(node))
        depths.append(depths[parents[-1]] + 1)
    mask = ancestor_mask(torch.tensor(parents), torch.tensor(depths))
    assert mask.tolist() == reference_ancestors(parents)
    tree = DraftTree(torch.zeros(num_nodes, dtype=torch.long), torch.tensor(parents), torch.tensor(depths), mask)
    assert tree.paths().tolist() == reference_paths(parents, depths)


def _token_paths(tree, keep=None):
    """The token sequence from the root to each node (restricted to `keep` nodes), as a set."""
    paths = set()
    for node in range(tree.num_nodes):
        if keep is not None and not keep[node]:
            continue
        chain, current = [], node
        while current >= 0:
            chain.append(int(tree.tokens[current]))
            current = int(tree.parents[current])
        paths.add(tuple(reversed(chain)))
    return paths


@pytest.mark.parametrize("seed", range(20))
def test_keep_rank_replays_smaller_budgets(seed):
    """The nodes of rank <= B in a large-budget tree are exactly the tree that budget B builds."""
    rng = torch.Generator().manual_seed(seed)
    n = 40
    parents = torch.cat(
        [torch.tensor([-1]), torch.stack([torch.randint(0, i, (1,), generator=rng)[0] for i in range(1, n)])]
    )
    depths = torch.zeros(n, dtype=torch.long)
    for i in range(1, n):
        depths[i] = depths[parents[i]] + 1
    tokens = torch.randint(0, 6, (n,), generator=rng)
    step = -torch.rand(n, generator=rng)
    step[0] = 0
    scores = torch.zeros(n)
    for i in range(1, n):
        scores[i] = scores[parents[i]] + step[i]
    full = build_tree(tokens, parents, scores, depths, budget=n)
    for budget in (1, 3, 7, 15):
        small = build_tree(tokens, parents, scores, depths, budget=budget)
        assert _token_paths(full, full.keep_rank <= budget) == _token_paths(small)
