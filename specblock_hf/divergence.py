"""Where two greedy outputs part, and whether that is a numerical near-tie of the target or a real difference.

A multi-token verify forward in bf16 does not reproduce a one-token forward bit for bit, so greedy speculative output
can leave plain greedy output where the target's top two logits are nearly equal. Such a split is only acceptable
when the target's own margin there is tiny; this module measures that margin.
"""

import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

# The smallest margin we always call a near-tie: two bf16 ulps at logit magnitude 16-32. Larger logits get more room.
BF16_NEAR_TIE_MARGIN = 0.25


def bf16_ulp(value: float) -> float:
    """Spacing of bf16 numbers (8 significant bits) at `value`."""
    return 2.0 ** (math.floor(math.log2(max(abs(value), 1e-30))) - 7)


@dataclass
class Divergence:
    """
    The first generated position where two outputs differ.

    Args:
        index: offset among the generated tokens.
        expected_token / actual_token: the reference's token and the other output's token there.
        margin: the target's logit of `expected_token` minus that of `actual_token`, from a plain forward over the
            common prefix, in the target's dtype.
        logit: the larger of the two logits there.
    """

    index: int
    expected_token: int
    actual_token: int
    margin: float
    logit: float

    @property
    def near_tie_threshold(self) -> float:
        """`BF16_NEAR_TIE_MARGIN`, or two bf16 ulps at this logit's magnitude when that is larger."""
        return max(BF16_NEAR_TIE_MARGIN, 2 * bf16_ulp(self.logit))

    def is_near_tie(self) -> bool:
        return abs(self.margin) <= self.near_tie_threshold


@torch.no_grad()
def first_divergence(
    model: PreTrainedModel, prompt_length: int, expected: torch.LongTensor, actual: torch.LongTensor
) -> Divergence | None:
    """
    Args:
        prompt_length: tokens of the prompt at the start of both sequences.
        expected, actual (`torch.LongTensor` of shape `(1, seq_len)`): prompt + generated tokens; typically plain
            greedy output and speculative greedy output.

    Returns:
        None when one output is a prefix of the other (identical up to the shorter length), else the `Divergence`.
    """
    length = min(expected.shape[1], actual.shape[1])
    differs = (expected[0, prompt_length:length] != actual[0, prompt_length:length]).nonzero()
    if differs.numel() == 0:
        return None
    index = int(differs[0, 0])
    position = prompt_length + index
    logits = model(expected[:, :position], logits_to_keep=1).logits[0, -1]
    expected_token, actual_token = int(expected[0, position]), int(actual[0, position])
    margin = float(logits[expected_token] - logits[actual_token])
    return Divergence(index, expected_token, actual_token, margin, float(logits[[expected_token, actual_token]].max()))
