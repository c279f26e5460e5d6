"""Block-iterative tree drafting with the SpecBlock drafter and rank-head branching widths (SPEC §4)."""

from dataclasses import dataclass

import torch

from .cache import DrafterCache, extend_key_values
from .drafting import block_causal_mask, row_local_mask
from .modeling_specblock import SpecBlockDrafter
from .tree import DraftTree, build_tree


@dataclass
class SpecBlockTreeConfig:
    """
    Shape of the trees SpecBlock drafts.

    Args:
        blocks: drafter forwards per tree (block 1 comes free with the commit forward; each later block is one
            batched forward over the best pending leaves).
        beam: most pending leaves one later block extends.
        budget: most tree nodes besides the root; the verify cost grows with it (a CPU wants far fewer than a GPU).
        width_table: branching width per rank class (top-1, rank 2-4, rank 5-10, miss).
        first_slot_caps: `(min greedy prob, max width)` caps for slot 0 of block 1, tried in order.
        slot_caps: the same for every other slot and later blocks.
    """

    blocks: int = 2
    beam: int = 10
    budget: int = 90
    width_table: tuple[int, ...] = (2, 4, 6, 4)
    first_slot_caps: tuple[tuple[float, int], ...] = ((0.9, 3), (0.8, 5), (0.6, 8))
    slot_caps: tuple[tuple[float, int], ...] = ((0.95, 2), (0.85, 3))

    def __post_init__(self):
        if self.blocks < 1 or self.beam < 1 or self.budget < 1:
            raise ValueError(
                f"blocks, beam and budget must be >= 1, got blocks={self.blocks}, beam={self.beam}, budget={self.budget}."
            )
        if not self.width_table or min(self.width_table) < 1:
            raise ValueError(f"width_table must hold widths >= 1, got {self.width_table}.")
        for threshold, width in (*self.first_slot_caps, *self.slot_caps):
            if not 0.0 <= threshold <= 1.0 or width < 1:
                raise ValueError(f"caps must be (probability in [0, 1], width >= 1), got ({threshold}, {width}).")


@dataclass
class _Nodes:
    """Candidate nodes of one block, flat: `(num_nodes,)` each."""

    tokens: torch.LongTensor
    parents: torch.LongTensor
    scores: torch.Tensor
    depths: torch.LongTensor


@dataclass
class _Leaves:
    """Pending leaves one later block may extend: node id, producing row and slot, token, score, depth."""

    nodes: torch.LongTensor
    rows: torch.LongTensor
    slots: torch.LongTensor
    tokens: torch.LongTensor
    scores: torch.Tensor
    depths: torch.LongTensor

    def take(self, index: torch.LongTensor) -> "_Leaves":
        return _Leaves(*(getattr(self, f)[index] for f in ("nodes", "rows", "slots", "tokens", "scores", "depths")))


class SpecBlockCandidateGenerator:
    """
    The SpecBlock drafter's inference state: its cache of committed entries (all K slots of each) and the root's
    block, which the commit forward yields for free. Implements `CandidateTreeGenerator`.
    """

    def __init__(self, drafter: SpecBlockDrafter, tree_config: SpecBlockTreeConfig):
        if len(tree_config.width_table) < drafter.config.rank_classes:
            raise ValueError(
                f"width_table {tree_config.width_table} gives no width for some of the drafter's "
                f"{drafter.config.rank_classes} rank classes; give one width per class."
            )
        self.drafter = drafter
        self.tree_config = tree_config
        self.block_size = drafter.block_size
        self.cache = DrafterCache(drafter.config.num_hidden_layers)
        self.device = drafter.d2t.device
        self.width_table = torch.tensor(tree_config.width_table, device=self.device)
        self.max_width = min(max(tree_config.width_table), drafter.config.draft_vocab_size)

    @torch.no_grad()
    def append(self, features: torch.Tensor, next_tokens: torch.LongTensor, positions: torch.LongTensor) -> None:
        """Commit verified entries (SPEC §5); the last entry's K slots are block 1 of the next tree."""
        n, K = next_tokens.shape[0], self.block_size
        slot_positions = positions[:, None] + 1 + torch.arange(K, device=self.device)  # (n, K)
        mask = torch.cat(
            [
                torch.ones(n * K, self.cache.length, dtype=torch.bool, device=self.device),
                block_causal_mask(n, K, self.device),
            ],
            dim=1,
        )
        out = self.drafter(
            condition=features[None].to(self.drafter.dtype),
            token_ids=next_tokens[None],
            position_ids=slot_positions[None],
            attention_mask=mask[None],
            past_key_values=self.cache.past(),
            condition_is_feature=True,
        )
        self.cache.append(out.key_values)
        self.root_token = next_tokens[-1:]
        self.root_slot_positions = slot_positions[-1]  # later blocks reuse block 1's position ids
        self.appended_states = out.hidden_states[0]  # (n, K, H)
        self.root_hidden = out.hidden_states[0, -1:]  # (1, K, H)
        self.root_logits = out.logits[0, -1:]  # (1, K, Vd)
        self.root_rank_logits = out.rank_logits[0, -1:]

    @torch.no_grad()
    def propose(self) -> DraftTree:
        """Grow the tree block by block from the root's block, then dedup and prune it to the budget."""
        config, K = self.tree_config, self.block_size
        zero = torch.zeros(1, device=self.device)
        root = _Nodes(self.root_token, torch.full_like(self.root_token, -1), zero, zero.long())
        nodes, leaves = self._expand(
            self.root_logits, self.root_rank_logits, root_nodes=root.parents + 1, root_scores=zero,
            root_depths=zero.long(), offset=1, first_block=True,
        )  # fmt: skip
        all_nodes = [root, nodes]
        num_nodes = 1 + nodes.tokens.shape[0]
        # the root's entry is the last K committed keys; a leaf of slot s sees the entries before it and slots <= s
        committed = torch.arange(self.cache.length, device=self.device)
        visible = committed[None, :] <= (self.cache.length - K + leaves.slots)[:, None]  # (num_leaves, S)
        hidden, extra = self.root_hidden, None
        for _ in range(1, config.blocks):
            beam = min(config.beam, max(1, (config.budget - num_nodes + 1) // K))
            if leaves.nodes.numel() == 0:
                break
            chosen = torch.argsort(leaves.scores, descending=True, stable=True)[:beam]
            leaves, visible = leaves.take(chosen), visible[chosen]
            out, mask = self._draft_block(hidden[leaves.rows, leaves.slots], leaves.tokens, visible, extra)
            new_nodes, new_leaves = self._expand(
                out.logits[0], out.rank_logits[0], root_nodes=leaves.nodes, root_scores=leaves.scores,
                root_depths=leaves.depths, offset=num_nodes, first_block=False,
            )  # fmt: skip
            all_nodes.append(new_nodes)
            num_nodes += new_nodes.tokens.shape[0]
            extra = extend_key_values(extra, out.key_values)
            # a new leaf sees what its producing slot saw: that slot's mask row
            visible = mask.view(leaves.nodes.shape[0], K, -1)[new_leaves.rows, new_leaves.slots]
            hidden, leaves = out.hidden_states[0], new_leaves
        return build_tree(
            torch.cat([n.tokens for n in all_nodes]),
            torch.cat([n.parents for n in all_nodes]),
            torch.cat([n.scores for n in all_nodes]),
            torch.cat([n.depths for n in all_nodes]),
            budget=config.budget,
        )

    def _draft_block(self, condition, tokens, visible, extra):
        """One batched drafter forward over pending leaves; returns its output and its `(N*K, keys)` mask."""
        N, K = tokens.shape[0], self.block_size
        mask = torch.cat([visible.repeat_interleave(K, dim=0), row_local_mask(N, K, self.device)], dim=1)
        out = self.drafter(
            condition=condition[None],
            token_ids=tokens[None],
            position_ids=self.root_slot_positions.expand(1, N, K),
            attention_mask=mask[None],
            past_key_values=self.cache.past(extra),
            condition_is_feature=False,
        )
        return out, mask

    def _widths(self, greedy_probs: torch.Tensor, rank_classes: torch.Tensor, first_block: bool) -> torch.Tensor:
        """Branching width per (row, slot): the rank class's table width under the greedy-probability caps."""
        widths = self.width_table[rank_classes].clamp(max=self.max_width)  # (N, K)
        caps = torch.full_like(widths, self.max_width)
        undecided = torch.ones_like(widths, dtype=torch.bool)
        slot = torch.arange(widths.shape[1], device=self.device)
        for caps_of, applies in (
            (self.tree_config.first_slot_caps, (slot == 0) & first_block),
            (self.tree_config.slot_caps, ~((slot == 0) & first_block)),
        ):
            for threshold, width in caps_of:
                hit = undecided & applies & (greedy_probs >= threshold)
                caps = torch.where(hit, width, caps)
                undecided &= ~hit
        return torch.minimum(widths, caps)

    def _expand(self, logits, rank_logits, root_nodes, root_scores, root_depths, offset, first_block):
        """
        Turn one block's K slots per row into tree nodes: each row's greedy chain plus ranks 2..w_k at slot k, and
        the pending leaves a later block may extend.

        Args:
            logits (`torch.FloatTensor` of shape `(N, K, Vd)`), rank_logits (`(N, K, rank_classes)`)
            root_nodes, root_scores, root_depths (`(N,)`): the node each row extends, its score and depth.
            offset (`int`): node id of this block's first new node.
        """
        N, K = logits.shape[:2]
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        top_scores, top_ids = log_probs.topk(self.max_width, dim=-1)  # (N, K, W)
        top_tokens = self.drafter.draft_to_target(top_ids)
        classes = rank_logits.argmax(dim=-1)  # (N, K)
        widths = self._widths(top_scores[..., 0].exp(), classes, first_block)

        greedy_ids = offset + torch.arange(N * K, device=self.device).view(N, K)
        greedy_scores = root_scores[:, None] + top_scores[..., 0].cumsum(dim=1)  # (N, K)
        parent_ids = torch.cat([root_nodes[:, None], greedy_ids[:, :-1]], dim=1)  # slot k hangs under greedy k-1
        parent_scores = torch.cat([root_scores[:, None], greedy_scores[:, :-1]], dim=1)
        depths = root_depths[:, None] + 1 + torch.arange(K, device=self.device)

        rank = torch.arange(self.max_width, device=self.device)
        is_alt = (rank > 0) & (rank < widths[..., None])  # (N, K, W)
        alt_rows, alt_slots, alt_ranks = is_alt.nonzero(as_tuple=True)
        alt_ids = offset + N * K + torch.arange(alt_rows.numel(), device=self.device)
        alt_scores = parent_scores[alt_rows, alt_slots] + top_scores[alt_rows, alt_slots, alt_ranks]
        nodes = _Nodes(
            tokens=torch.cat([top_tokens[..., 0].flatten(), top_tokens[alt_rows, alt_slots, alt_ranks]]),
            parents=torch.cat([parent_ids.flatten(), parent_ids[alt_rows, alt_slots]]),
            scores=torch.cat([greedy_scores.flatten(), alt_scores]),
            depths=torch.cat([depths.flatten(), depths[alt_rows, alt_slots]]),
        )

        # pending: greedy nodes of branching slots, all alternatives, and each chain end unless its row "gives up"
        # (its first slot that is not class 0 is class 3, the miss class)
        not_top1 = classes != 0
        first_uncertain = torch.where(not_top1.any(dim=1), not_top1.float().argmax(dim=1), 0)
        gives_up = not_top1.any(dim=1) & (classes.gather(1, first_uncertain[:, None]).squeeze(1) == 3)
        pending_greedy = widths >= 2
        pending_greedy[:, -1] |= ~gives_up
        greedy_rows, greedy_slots = pending_greedy.nonzero(as_tuple=True)
        rows = torch.cat([greedy_rows, alt_rows])
        slots = torch.cat([greedy_slots, alt_slots])
        leaves = _Leaves(
            nodes=torch.cat([greedy_ids[greedy_rows, greedy_slots], alt_ids]),
            rows=rows,
            slots=slots,
            tokens=torch.cat([top_tokens[greedy_rows, greedy_slots, 0], nodes.tokens[N * K :]]),
            scores=torch.cat([greedy_scores[greedy_rows, greedy_slots], alt_scores]),
            depths=depths[rows, slots],
        )
        return nodes, leaves


__all__ = ["SpecBlockCandidateGenerator", "SpecBlockTreeConfig"]
