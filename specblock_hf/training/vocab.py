"""The draft vocabulary: the most frequent assistant tokens of the training set and its `d2t`/`t2d` maps (SPEC §3)."""

from collections.abc import Iterable

import torch


def select_draft_vocab(
    token_id_tensors: Iterable[torch.Tensor], vocab_size: int, draft_vocab_size: int
) -> tuple[torch.LongTensor, float]:
    """
    The `draft_vocab_size` most frequent target ids among the assistant tokens (ties to the smaller id), padded with
    the smallest unused ids 0, 1, 2, … when fewer distinct ids occur.

    Args:
        token_id_tensors: assistant token ids (any shapes), e.g. `TokenizedDataset.assistant_tokens()`.
        vocab_size: the target vocabulary size V.
        draft_vocab_size: Vd ≤ V.

    Returns:
        used_ids (`torch.LongTensor` of shape `(draft_vocab_size,)`, sorted ascending) and coverage: the share of
        assistant tokens whose id is in the draft vocabulary.
    """
    if not 0 < draft_vocab_size <= vocab_size:
        raise ValueError(f"Need 0 < draft_vocab_size <= vocab_size, got {draft_vocab_size} and {vocab_size}.")
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for token_ids in token_id_tensors:
        token_ids = token_ids.reshape(-1).long().cpu()
        if token_ids.numel() and (token_ids.min() < 0 or token_ids.max() >= vocab_size):
            raise ValueError(f"Token ids must lie in [0, {vocab_size}), got {token_ids.min()}..{token_ids.max()}.")
        counts += torch.bincount(token_ids, minlength=vocab_size)
    # a stable descending sort orders equal counts by id, so the choice is deterministic
    by_frequency = torch.sort(counts, descending=True, stable=True).indices
    num_frequent = min(draft_vocab_size, int((counts > 0).sum()))
    frequent = by_frequency[:num_frequent]
    unused = torch.ones(vocab_size, dtype=torch.bool)
    unused[frequent] = False
    padding = unused.nonzero().squeeze(1)[: draft_vocab_size - num_frequent]
    used_ids = torch.cat([frequent, padding]).sort().values
    total = int(counts.sum())
    coverage = float(counts[used_ids].sum()) / total if total else 0.0
    return used_ids, coverage


def vocab_maps(used_ids: torch.Tensor, vocab_size: int) -> tuple[torch.LongTensor, torch.BoolTensor]:
    """
    The drafter's vocabulary maps, as `DrafterPreTrainedModel.init_vocab_mapping` sets them.

    Args:
        used_ids (`torch.LongTensor` of shape `(draft_vocab_size,)`): distinct target ids, sorted ascending.

    Returns:
        d2t (`torch.LongTensor` of shape `(draft_vocab_size,)`): offsets, draft id `d` is target id `d + d2t[d]`;
        t2d (`torch.BoolTensor` of shape `(vocab_size,)`): whether a target id is in the draft vocabulary.
    """
    used_ids = used_ids.long()
    if used_ids.numel() > 1 and not bool((used_ids[1:] > used_ids[:-1]).all()):
        raise ValueError("used_ids must be distinct and sorted ascending (as select_draft_vocab returns them).")
    if used_ids.numel() and (used_ids[0] < 0 or used_ids[-1] >= vocab_size):
        raise ValueError(f"used_ids must lie in [0, {vocab_size}).")
    d2t = used_ids - torch.arange(used_ids.numel())
    t2d = torch.zeros(vocab_size, dtype=torch.bool)
    t2d[used_ids] = True
    return d2t, t2d
