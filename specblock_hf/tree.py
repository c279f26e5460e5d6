"""DraftTree: candidate nodes -> a deduplicated, budget-pruned tree with its ancestor mask, depths and paths."""

from dataclasses import dataclass

import torch


@dataclass
class DraftTree:
    """
    A token tree in topological order (every parent before its children), root first.

    Args:
        tokens (`torch.LongTensor` of shape `(num_nodes,)`): target-vocabulary ids; `tokens[0]` is the root (the last
            committed token).
        parents (`torch.LongTensor` of shape `(num_nodes,)`): parent index of each node, -1 for the root.
        depths (`torch.LongTensor` of shape `(num_nodes,)`): distance from the root.
        ancestor_mask (`torch.BoolTensor` of shape `(num_nodes, num_nodes)`): `[i, j]` is True when `j` is `i` or an
            ancestor of `i` — the tree part of the verification attention mask.
        keep_rank (`torch.LongTensor` of shape `(num_nodes,)`, *optional*): each node's place in the pruning order
            (1 = kept first; the root 0). The tree a budget `B` would have kept is exactly the nodes of rank <= B,
            which lets the cost model replay a round under smaller budgets.
    """

    tokens: torch.LongTensor
    parents: torch.LongTensor
    depths: torch.LongTensor
    ancestor_mask: torch.BoolTensor
    keep_rank: torch.LongTensor | None = None

    @classmethod
    def root(cls, token: torch.LongTensor) -> "DraftTree":
        """A tree of the root alone (`token` of shape `(1,)`): the target's next token is all a round can emit."""
        device = token.device
        return cls(
            tokens=token,
            parents=torch.full((1,), -1, device=device),
            depths=torch.zeros(1, dtype=torch.long, device=device),
            ancestor_mask=torch.ones(1, 1, dtype=torch.bool, device=device),
        )

    @property
    def num_nodes(self) -> int:
        return self.tokens.shape[0]

    def paths(self) -> torch.LongTensor:
        """
        Root-to-leaf paths, one row per leaf, as node indices padded with -1.

        Returns:
            `torch.LongTensor` of shape `(num_leaves, max_depth + 1)`.
        """
        is_parent = torch.zeros_like(self.tokens, dtype=torch.bool)
        is_parent[self.parents[1:]] = True
        leaves = (~is_parent).nonzero().squeeze(1)
        paths = torch.full(
            (leaves.numel(), int(self.depths.max()) + 1), -1, dtype=torch.long, device=self.tokens.device
        )
        rows, nodes = self.ancestor_mask[leaves].nonzero(as_tuple=True)
        paths[rows, self.depths[nodes]] = nodes
        return paths


def ancestor_mask(parents: torch.LongTensor, depths: torch.LongTensor) -> torch.BoolTensor:
    """`[i, j]` True when `j` is `i` or one of its ancestors; one scatter per tree level, not per node."""
    num_nodes = parents.shape[0]
    rows = torch.arange(num_nodes, device=parents.device)
    mask = torch.eye(num_nodes, dtype=torch.bool, device=parents.device)
    step = parents.clamp(min=0)  # the root is its own parent: the repeated scatter onto the root is harmless
    current = rows
    for _ in range(int(depths.max())):
        current = step[current]
        mask[rows, current] = True
    return mask


def dedup_siblings(
    tokens: torch.LongTensor, parents: torch.LongTensor, scores: torch.Tensor, depths: torch.LongTensor
) -> tuple[torch.LongTensor, torch.BoolTensor]:
    """
    Merge siblings that carry the same token: keep the higher-scoring one and re-parent the other's children onto it
    (which may in turn merge them with its children). Processed level by level, vectorised within a level.

    Args:
        tokens, parents, scores, depths: candidate nodes in any order where a parent precedes its children; node 0 is
            the root.

    Returns:
        The re-parented `parents` and a `keep` mask (False for merged-away nodes).
    """
    parents = parents.clone()
    canonical = torch.arange(tokens.shape[0], device=tokens.device)
    vocab = int(tokens.max()) + 1
    for depth in range(1, int(depths.max()) + 1):
        level = (depths == depth).nonzero().squeeze(1)
        parents[level] = canonical[parents[level]]
        keys = parents[level] * vocab + tokens[level]
        # order by key, then score descending, then index: the first node of each key group wins
        by_score = torch.argsort(scores[level], descending=True, stable=True)
        by_key = by_score[torch.argsort(keys[by_score], stable=True)]
        sorted_keys = keys[by_key]
        group_start = torch.ones_like(sorted_keys, dtype=torch.bool)
        group_start[1:] = sorted_keys[1:] != sorted_keys[:-1]
        group_id = group_start.cumsum(0) - 1
        winners = level[by_key][group_start]
        canonical[level[by_key]] = winners[group_id]
    keep = canonical == torch.arange(tokens.shape[0], device=tokens.device)
    return parents, keep


def build_tree(
    tokens: torch.LongTensor,
    parents: torch.LongTensor,
    scores: torch.Tensor,
    depths: torch.LongTensor,
    budget: int,
) -> DraftTree:
    """
    Finalise candidate nodes into a `DraftTree` (SPEC §4): dedup siblings, then keep the `budget` best nodes by
    cumulative log-prob together with their ancestors, and lay them out parents-first.

    Scores are cumulative log-probs, so a node never outscores its ancestors; sorting by (score desc, depth asc)
    therefore lists every ancestor before its descendants and any prefix of that order is a valid tree.

    Args:
        tokens (`torch.LongTensor` of shape `(num_candidates,)`): node 0 is the root.
        parents (`torch.LongTensor` of shape `(num_candidates,)`): -1 for the root; parents precede children.
        scores (`torch.FloatTensor` of shape `(num_candidates,)`): cumulative log-probs (root 0).
        depths (`torch.LongTensor` of shape `(num_candidates,)`)
        budget (`int`): the most nodes kept besides the root.
    """
    parents, keep = dedup_siblings(tokens, parents, scores, depths)
    candidates = keep.nonzero().squeeze(1)[1:]  # root excluded
    order = candidates[torch.argsort(depths[candidates], stable=True)]
    order = order[torch.argsort(scores[order], descending=True, stable=True)]
    chosen = order[:budget]
    by_depth = torch.argsort(depths[chosen], stable=True)
    chosen = chosen[by_depth]
    nodes = torch.cat([chosen.new_zeros(1), chosen])
    keep_rank = torch.cat([chosen.new_zeros(1), 1 + by_depth])
    new_index = torch.full_like(tokens, -1)
    new_index[nodes] = torch.arange(nodes.numel(), device=tokens.device)
    new_parents = new_index[parents[nodes].clamp(min=0)]
    new_parents[0] = -1
    new_depths = depths[nodes]
    return DraftTree(
        tokens=tokens[nodes],
        parents=new_parents,
        depths=new_depths,
        ancestor_mask=ancestor_mask(new_parents, new_depths),
        keep_rank=keep_rank,
    )


__all__ = ["DraftTree", "ancestor_mask", "build_tree", "dedup_siblings"]
