"""The contract between the decode loop and a drafter: feed it verified features, get back a candidate tree."""

from typing import Protocol

import torch

from .tree import DraftTree


class CandidateTreeGenerator(Protocol):
    """
    A drafter's inference state (its key/value cache and the root's pending prediction) behind two calls.

    The data path is one-directional: `append` the entries the target just verified, then `propose` the next tree.
    Entry alignment is the training one (SPEC §5): entry `i` pairs the target features of token `t_i` with the next
    token `t_{i+1}`; the last appended entry's next token is the root of the next tree.

    Attributes:
        appended_states (`torch.Tensor` of shape `(num_entries, slots, hidden_size)`): after `append`, the drafter's
            pre-norm state of each slot of each appended entry (slot k predicts token `t_{i+k+2}`; EAGLE-3 has one
            slot). Online adaptation learns from them.
    """

    appended_states: torch.Tensor

    def append(self, features: torch.Tensor, next_tokens: torch.LongTensor, positions: torch.LongTensor) -> None:
        """
        Args:
            features (`torch.FloatTensor` of shape `(num_entries, 3 * target_hidden_size)`): target features of the
                verified tokens (low | mid | high layer outputs).
            next_tokens (`torch.LongTensor` of shape `(num_entries,)`): the token that follows each of them.
            positions (`torch.LongTensor` of shape `(num_entries,)`): position ids of the verified tokens.
        """

    def propose(self) -> DraftTree:
        """Draft the next candidate tree, rooted at the last appended `next_token`."""


def block_causal_mask(num_rows: int, block_size: int, device: torch.device) -> torch.BoolTensor:
    """
    Attention among the rows of one drafter forward, row-major `(row, slot)`: a slot sees every slot of earlier rows
    and the slots of its own row up to itself.

    Returns:
        `torch.BoolTensor` of shape `(num_rows * block_size, num_rows * block_size)`.
    """
    row = torch.arange(num_rows, device=device).repeat_interleave(block_size)
    slot = torch.arange(block_size, device=device).repeat(num_rows)
    return (row[None, :] < row[:, None]) | ((row[None, :] == row[:, None]) & (slot[None, :] <= slot[:, None]))


def row_local_mask(num_rows: int, block_size: int, device: torch.device) -> torch.BoolTensor:
    """
    Attention among independent rows (tree leaves drafted side by side): a slot sees only its own row's slots up to
    itself.

    Returns:
        `torch.BoolTensor` of shape `(num_rows * block_size, num_rows * block_size)`.
    """
    row = torch.arange(num_rows, device=device).repeat_interleave(block_size)
    slot = torch.arange(block_size, device=device).repeat(num_rows)
    return (row[None, :] == row[:, None]) & (slot[None, :] <= slot[:, None])
