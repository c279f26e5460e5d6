"""Where two greedy outputs part, and whether that is a numerical near-tie of the target or a real difference.

A multi-token verify forward in bf16 does not reproduce a one-token forward bit for bit, so greedy speculative output
can leave plain greedy output where the target's top two logits are nearly equal. Such a split is only acceptable
when the target's own margin there is tiny; this module measures that margin.
"""

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

# Two bf16 ulps at logit magnitude 16-32 (SmolLM2's top logits): a multi-token forward reorders reductions and drifts by that.
BF16_NEAR_TIE_MARGIN = 0.25


@dataclass
class Divergence:
    """
    The first generated position where two outputs differ.

    Args:
        index: offset among the generated tokens.
        expected_token / actual_token: the reference's token and the other output's token there.
        margin: the target's logit of `expected_token` minus that of `actual_token`, from a plain forward over the
            common prefix, in the target's dtype.
    """

    index: int
    expected_token: int
    actual_token: int
    margin: float

    def is_near_tie(self, threshold: float = BF16_NEAR_TIE_MARGIN) -> bool:
        return abs(self.margin) <= threshold


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
    return Divergence(index, expected_token, actual_token, float(logits[expected_token] - logits[actual_token]))
