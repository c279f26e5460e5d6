"""Acceptance of a verified tree: greedy and lossless sampling, with the user's logits processors and stop rules."""

from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList

from .tree import DraftTree


@dataclass
class Acceptance:
    """
    Outcome of one round.

    Args:
        input_ids (`torch.LongTensor` of shape `(1, seq_len + num_emitted)`): the sequence with the emitted tokens.
        emitted (`torch.LongTensor` of shape `(num_emitted,)`): accepted draft tokens, then the target's own token.
        path (`torch.LongTensor` of shape `(num_emitted,)`): the tree nodes whose target outputs produced `emitted`:
            the root and the accepted drafts. These rows stay in the target cache.
        finished: a stopping criterion (EOS, length, stop string, ...) fired on the last emitted token.
        scores / raw_logits: processed scores and raw logits of each emitted token, `(1, vocab_size)` each.
    """

    input_ids: torch.LongTensor
    emitted: torch.LongTensor
    path: torch.LongTensor
    finished: bool
    scores: list[torch.Tensor] = field(default_factory=list)
    raw_logits: list[torch.Tensor] = field(default_factory=list)


def accept(
    tree: DraftTree,
    logits: torch.Tensor,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    do_sample: bool,
    generator: torch.Generator | None = None,
) -> Acceptance:
    """
    Walk the tree from the root the way plain decoding would: at the current node take the target's next token
    (argmax, or a sample, of the processed scores given everything emitted so far); if a child carries that token,
    move to it and repeat, else that token is the bonus and the round ends.

    Sampling is lossless: drafts are deterministic, so "accept child x with probability p(x) over the remaining mass,
    else sample the residual" (SPEC §5) is the same law as one draw y ~ p followed by a match of y among the children;
    we make that one draw. Every emitted token is therefore distributed exactly as under plain sampling. Greedy picks
    the argmax, so the output equals plain greedy decoding token for token.

    Args:
        tree: the verified tree.
        logits (`torch.FloatTensor` of shape `(num_nodes, vocab_size)`): target logits at every tree node.
        input_ids (`torch.LongTensor` of shape `(1, seq_len)`): the committed sequence, ending with the root token.
    """
    node = 0
    path, emitted, scores_out, raw_out = [0], [], [], []
    finished = False
    for _ in range(int(tree.depths.max()) + 1):
        raw = logits[node : node + 1].float()
        scores = logits_processor(input_ids, raw)
        if do_sample:
            token = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1, generator=generator)[0]
        else:
            token = scores.argmax(dim=-1)
        input_ids = torch.cat([input_ids, token[None]], dim=-1)
        emitted.append(token)
        scores_out.append(scores)
        raw_out.append(raw)
        if stopping_criteria(input_ids, scores).any():
            finished = True
            break
        child = ((tree.parents == node) & (tree.tokens == token)).nonzero()
        if child.numel() == 0:
            break
        node = int(child[0, 0])
        path.append(node)
    return Acceptance(
        input_ids=input_ids,
        emitted=torch.cat(emitted),
        path=torch.tensor(path, device=logits.device),
        finished=finished,
        scores=scores_out,
        raw_logits=raw_out,
    )
