"""EAGLE-3 tree drafting: a top-k beam over depth, one drafter forward per level (SPEC §7)."""

from dataclasses import dataclass

import torch

from .attention import KeyValue
from .cache import DrafterCache, extend_key_values
from .modeling_eagle3 import Eagle3Drafter, Eagle3Output
from .tree import DraftTree, build_tree


@dataclass
class Eagle3TreeConfig:
    """
    Shape of the trees EAGLE-3 drafts.

    Args:
        top_k: children drafted per expanded node, and nodes kept per level for expansion (the frontier).
        depth: expansion steps after the root's top-k (SPEC §7: 7), so the tree has `depth + 1` levels below the root
            and costs `depth` drafter forwards; level 1 comes with the forward that appended the verified entries.
        total_tokens: most tree nodes besides the root, chosen by cumulative log-prob among all candidates.
    """

    top_k: int = 10
    depth: int = 7
    total_tokens: int = 60

    def __post_init__(self):
        if self.top_k < 1 or self.depth < 1 or self.total_tokens < 1:
            raise ValueError(
                f"top_k, depth and total_tokens must be >= 1, got top_k={self.top_k}, depth={self.depth}, "
                f"total_tokens={self.total_tokens}."
            )


class Eagle3CandidateGenerator:
    """
    The EAGLE-3 drafter's inference state: its cache of committed entries and the root's prediction, which the
    forward that appends entries yields for free. Implements `CandidateTreeGenerator`.

    Entry alignment (SPEC §5): entry `i` pairs the features of token `t_i` with `t_{i+1}` at `t_i`'s position. A tree
    node `x` at depth `d` is drafted as the entry it would become once committed: the state its parent's forward
    produced, token `x`, position `root_position + d - 1` (its parent's), attending to the committed entries, its
    tree ancestors' uncommitted entries, and itself.

    Attributes:
        root_token (`torch.LongTensor` of shape `(1,)`): the last appended `next_token`, root of the next tree.
        root_position (`torch.LongTensor` of shape `(1,)`): position of the root token.
        root_hidden (`torch.FloatTensor` of shape `(1, hidden_size)`): output state of the last appended entry.
        root_logits (`torch.FloatTensor` of shape `(1, draft_vocab_size)`): its prediction of the root's children.
    """

    def __init__(self, drafter: Eagle3Drafter, tree_config: Eagle3TreeConfig):
        if tree_config.top_k > drafter.config.draft_vocab_size:
            raise ValueError(
                f"top_k={tree_config.top_k} exceeds the draft vocabulary ({drafter.config.draft_vocab_size} tokens)."
            )
        self.drafter = drafter
        self.tree_config = tree_config
        self.cache = DrafterCache(num_layers=1)
        self.device = drafter.d2t.device

    @torch.no_grad()
    def append(self, features: torch.Tensor, next_tokens: torch.LongTensor, positions: torch.LongTensor) -> None:
        """Commit verified entries (SPEC §5), causally over the cache; the last entry predicts the next tree's level 1."""
        n = next_tokens.shape[0]
        mask = torch.cat(
            [
                torch.ones(n, self.cache.length, dtype=torch.bool, device=self.device),
                torch.ones(n, n, dtype=torch.bool, device=self.device).tril(),
            ],
            dim=1,
        )
        out = self.drafter(
            hidden=features[None].to(self.drafter.dtype),
            token_ids=next_tokens[None],
            position_ids=positions[None],
            attention_mask=mask[None],
            past_key_values=self.cache.past(),
            hidden_is_feature=True,
        )
        self.cache.append(out.key_values)
        self.root_token = next_tokens[-1:]
        self.root_position = positions[-1:] + 1
        self.appended_states = out.hidden_states[0, :, None]  # (n, 1, H)
        self.root_hidden = out.hidden_states[0, -1:]  # (1, H)
        self.root_logits = out.logits[0, -1:]  # (1, Vd)

    @torch.no_grad()
    def propose(self) -> DraftTree:
        """
        Level by level, expand each frontier node by its `top_k` most likely children and keep the `top_k` best
        children by cumulative log-prob as the next frontier; then keep the best `total_tokens` of all candidates.
        """
        config, k = self.tree_config, self.tree_config.top_k
        zero = torch.zeros(1, device=self.device)
        tokens, parents, scores, depths = [self.root_token], [zero.long() - 1], [zero], [zero.long()]
        # the frontier starts as the root, whose prediction came with the last append
        nodes, node_scores, hidden, logits = zero.long(), zero, self.root_hidden, self.root_logits
        ancestry = torch.zeros(1, 0, dtype=torch.bool, device=self.device)  # (F, U): uncommitted ancestors
        num_candidates, extra = 1, None
        for depth in range(1, config.depth + 2):
            top_log_probs, top_ids = torch.log_softmax(logits.float(), dim=-1).topk(k, dim=-1)  # (F, k)
            child_scores = (node_scores[:, None] + top_log_probs).flatten()  # (F * k,)
            child_tokens = self.drafter.draft_to_target(top_ids).flatten()
            tokens.append(child_tokens)
            parents.append(nodes.repeat_interleave(k))
            scores.append(child_scores)
            depths.append(torch.full_like(child_tokens, depth))
            if depth <= config.depth:
                best = child_scores.topk(k).indices  # F * k >= k: the frontier is always full
                rows = best // k  # frontier row of each chosen child's parent
                ancestry = torch.cat([ancestry[rows], torch.eye(k, dtype=torch.bool, device=self.device)], dim=1)
                out, extra = self._draft_level(hidden[rows], child_tokens[best], depth, ancestry, extra)
                nodes, node_scores = num_candidates + best, child_scores[best]
                hidden, logits = out.hidden_states[0], out.logits[0]
            num_candidates += child_tokens.shape[0]
        return build_tree(
            torch.cat(tokens), torch.cat(parents), torch.cat(scores), torch.cat(depths), budget=config.total_tokens
        )

    def _draft_level(
        self,
        hidden: torch.Tensor,
        tokens: torch.LongTensor,
        depth: int,
        ancestry: torch.BoolTensor,
        extra: list[KeyValue] | None,
    ) -> tuple[Eagle3Output, list[KeyValue]]:
        """
        One batched drafter forward over the frontier nodes at `depth`.

        Args:
            hidden (`torch.FloatTensor` of shape `(F, hidden_size)`): output state of each node's parent.
            tokens (`torch.LongTensor` of shape `(F,)`): each node's token.
            ancestry (`torch.BoolTensor` of shape `(F, U + F)`): which uncommitted entries (earlier levels, then these
                nodes) each node sees: its tree ancestors and itself.
            extra: uncommitted keys and values of the earlier levels, `U` entries, or None at the first level.

        Returns:
            The drafter output and the uncommitted keys and values extended by this level's.
        """
        F = tokens.shape[0]
        mask = torch.cat([torch.ones(F, self.cache.length, dtype=torch.bool, device=self.device), ancestry], dim=1)
        out = self.drafter(
            hidden=hidden[None],
            token_ids=tokens[None],
            position_ids=(self.root_position + depth - 1).expand(1, F),
            attention_mask=mask[None],
            past_key_values=self.cache.past(extra),
            hidden_is_feature=False,
        )
        return out, extend_key_values(extra, out.key_values)


__all__ = ["Eagle3CandidateGenerator", "Eagle3TreeConfig"]
