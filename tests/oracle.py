"""An oracle test double: a real candidate generator whose trees get the target's true continuation grafted in.

Random drafters are accepted about never; the oracle makes long accepted paths happen (so EOS and length limits fall
inside accepted paths, and accepted nodes sit at arbitrary tree positions), while the wrapped generator's own append
and propose code still runs every round.
"""

import torch

from specblock_hf.tree import DraftTree, ancestor_mask


class OracleCandidateGenerator:
    """
    Wraps a `CandidateTreeGenerator`; after each `propose`, a random root-to-leaf path of the real tree is relabelled
    with the first tokens of `continuation(sequence)` (the target's own next tokens) and, when the real tree is too
    shallow, extended by a chain of them. `agreement` is the chance that each grafted token is the true one.
    """

    def __init__(self, inner, prompt, continuation, generator: torch.Generator, depth=8, agreement=0.9):
        self.inner = inner
        self.first_token = prompt[:1]
        self.continuation = continuation
        self.rng = generator
        self.depth = depth
        self.agreement = agreement
        self.sequence = None  # the committed tokens, root last

    def append(self, features, next_tokens, positions):
        self.inner.append(features, next_tokens, positions)
        if self.sequence is None:  # prefill: the first prompt token, then each position's next token
            self.sequence = torch.cat([self.first_token, next_tokens])
        else:
            self.sequence = torch.cat([self.sequence, next_tokens])

    def propose(self) -> DraftTree:
        tree = self.inner.propose()
        truth = self.continuation(self.sequence)  # tokens after the root
        leaves = tree.paths()
        path = leaves[torch.randint(leaves.shape[0], (1,), generator=self.rng)][0]
        path = path[path >= 0][1:]  # drafts below the root
        tokens, parents, depths = tree.tokens.clone(), tree.parents.clone(), tree.depths.clone()
        graft = min(path.numel(), truth.numel())
        tokens[path[:graft]] = truth[:graft]
        extra = truth[graft : self.depth]
        if extra.numel():
            start = tokens.numel()
            tip = path[graft - 1] if graft > 0 else torch.tensor(0)
            tokens = torch.cat([tokens, extra])
            chain_parents = torch.arange(start - 1, start - 1 + extra.numel())
            chain_parents[0] = tip
            parents = torch.cat([parents, chain_parents])
            depths = torch.cat([depths, depths[tip] + 1 + torch.arange(extra.numel())])
        wrong = torch.rand(tokens.shape, generator=self.rng) > self.agreement
        wrong[0] = False
        tokens = torch.where(wrong, (tokens + 1) % 256, tokens)
        return DraftTree(tokens=tokens, parents=parents, depths=depths, ancestor_mask=ancestor_mask(parents, depths))
