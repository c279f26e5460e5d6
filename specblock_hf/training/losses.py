"""Drafter training objectives (SPEC §6): multi-block test-time training for SpecBlock, its EAGLE-3 counterpart.

Alignment: position i holds target features h_i and token x_{i+1}. A prediction of x_{t+1} is supervised by the
target's distribution at position t, renormalised over the draft vocabulary (soft cross-entropy).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..cache import extend_key_values
from ..drafting import block_causal_mask, row_local_mask
from ..modeling_eagle3 import Eagle3Drafter
from ..modeling_specblock import SpecBlockDrafter

SLOT_DECAY = 0.8  # draft-loss weight 0.8^k of slot (or step) k
RANK_TOP = 10


@dataclass
class TargetSignals:
    """
    What the target says at every position of a batch.

    Args:
        draft_probs (`torch.FloatTensor` of shape `(B, n, Vd)`): target distribution renormalised over the draft vocab.
        argmax (`torch.LongTensor` of shape `(B, n)`): the target's argmax over its full vocabulary.
        predictable (`torch.BoolTensor` of shape `(B, n)`): position t may be supervised (x_{t+1} exists and is an
            assistant token).
    """

    draft_probs: torch.Tensor
    argmax: torch.LongTensor
    predictable: torch.BoolTensor


@torch.no_grad()
def target_signals(last_hidden, lm_head_weight, used_ids, input_ids, loss_mask, lengths) -> TargetSignals:
    """
    Args:
        last_hidden (`(B, n, H)`): the target's final-norm output; logits = last_hidden @ lm_head_weight.T.
        used_ids (`(Vd,)`): target ids of the draft vocabulary, ascending.
        loss_mask (`(B, n)`): True on assistant tokens; lengths (`(B,)`): real lengths (right padding).
    """
    hidden = last_hidden.to(lm_head_weight.dtype)
    logits = hidden @ lm_head_weight.T  # (B, n, V)
    argmax = logits.argmax(dim=-1)
    draft_probs = torch.softmax(logits[..., used_ids].float(), dim=-1)
    n = input_ids.shape[1]
    next_is_real = torch.arange(n, device=input_ids.device)[None, :] + 1 < lengths[:, None]
    next_is_assistant = F.pad(loss_mask[:, 1:], (0, 1), value=False)
    return TargetSignals(draft_probs, argmax, next_is_real & next_is_assistant)


def _gather_positions(values: torch.Tensor, index: torch.LongTensor) -> torch.Tensor:
    """`values` (B, n, ...) gathered at `index` (B, n, K) along positions -> (B, n, K, ...), indices clamped."""
    B, n = values.shape[:2]
    flat = index.clamp(0, n - 1).reshape(B, -1)  # (B, n*K)
    gathered = values[torch.arange(B, device=values.device)[:, None], flat]
    return gathered.view(*index.shape, *values.shape[2:])


@dataclass
class BlockLoss:
    draft: torch.Tensor
    rank: torch.Tensor
    correct: torch.BoolTensor  # (B, n, K) drafter argmax == target argmax
    valid: torch.BoolTensor  # (B, n, K)


def block_loss(logits, rank_logits, signals: TargetSignals, target_index, d2t, rank_classes: int) -> BlockLoss:
    """
    Loss of one block (SPEC §6): soft CE weighted 0.8^k under the valid-prefix (chain) mask, and the rank loss
    (label = the target argmax's rank in the draft top-10: class 0 top-1, 1 ranks 2-4, 2 ranks 5-10, 3 miss) under its
    own chain mask, with per-class reweighting, ordinal soft targets and a distance weight.

    Args:
        logits (`(B, n, K, Vd)`), rank_logits (`(B, n, K, C)` or None)
        target_index (`(B, n, K)`): position t whose target distribution supervises each slot.
    """
    n = signals.argmax.shape[1]
    valid = (target_index < n) & _gather_positions(signals.predictable, target_index)
    probs = _gather_positions(signals.draft_probs, target_index)  # (B, n, K, Vd)
    target_argmax = _gather_positions(signals.argmax, target_index)
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    top_ids = log_probs.topk(RANK_TOP, dim=-1).indices  # (B, n, K, 10)
    top_tokens = top_ids + d2t[top_ids]
    correct = top_tokens[..., 0] == target_argmax
    prefix_correct = F.pad(correct.cumprod(dim=-1)[..., :-1], (1, 0), value=True).bool()
    K = logits.shape[2]
    slot_weight = SLOT_DECAY ** torch.arange(K, device=logits.device, dtype=torch.float)
    cross_entropy = -(probs * log_probs).sum(dim=-1)  # (B, n, K)
    counts = valid.sum(dim=(0, 1)).clamp(min=1)
    draft = ((cross_entropy * (valid & prefix_correct)).sum(dim=(0, 1)) / counts * slot_weight).sum()
    rank = logits.new_zeros(()).float()
    if rank_logits is not None:
        rank = _rank_loss(rank_logits.float(), top_tokens, target_argmax, valid, rank_classes)
    return BlockLoss(draft, rank, correct & valid, valid)


def _rank_loss(rank_logits, top_tokens, target_argmax, valid, rank_classes):
    hits = top_tokens == target_argmax[..., None]  # (B, n, K, 10)
    rank = torch.where(hits.any(-1), hits.float().argmax(-1), RANK_TOP)  # 0-based rank, 10 = miss
    boundaries = torch.tensor([1, 4, RANK_TOP], device=rank.device)
    label = torch.bucketize(rank, boundaries, right=True).clamp(max=rank_classes - 1)  # (B, n, K)
    predicted = rank_logits.argmax(-1)
    prefix_right = F.pad((predicted == label).cumprod(dim=-1)[..., :-1], (1, 0), value=True).bool()
    mask = valid & prefix_right
    if not mask.any():
        return rank_logits.new_zeros(())
    classes = torch.arange(rank_classes, device=rank.device)
    counts = torch.bincount(label[mask], minlength=rank_classes).float()
    reweight = (10.0 / counts.clamp(min=1)).clamp(max=1.0)
    gap = (label[..., None] - classes).float()  # t - c
    soft = 1.0 / (1 + gap.abs() + gap.clamp(min=0)) ** 2
    soft = soft / soft.sum(-1, keepdim=True)
    miss = (label - predicted).float()
    distance = 1 + miss.abs() + miss.clamp(min=0)
    loss = -(soft * torch.log_softmax(rank_logits, -1)).sum(-1) * distance * reweight[label]
    return (loss * mask).sum() / mask.sum()


def specblock_loss(drafter: SpecBlockDrafter, batch: dict, signals: TargetSignals, num_blocks: int, generator=None):
    """
    Multi-block test-time training. Block 1 runs as at inference (features h_i, token x_{i+1}; a slot sees every
    slot of earlier positions and its own slots <= k). Before each next block, M ~ U{1..K} per position; the next
    block's condition is slot M-1's state (not detached), its token the teacher-forced id at offset o += M, and it sees
    the block-1 slots of earlier positions, each earlier block's slots < M at its own position, and its own slots <= k:
    exactly what a later block sees at inference (SPEC §6 Decision).

    Args:
        batch: `input_ids` (B, n) and `features` (B, n, 3H).

    Returns:
        The summed draft loss, the summed rank loss, and block 1's `BlockLoss` (for accuracy metrics).
    """
    input_ids, features = batch["input_ids"], batch["features"]
    B, n = input_ids.shape
    K = drafter.block_size
    device = input_ids.device
    positions = torch.arange(n, device=device)
    slots = torch.arange(K, device=device)
    query_position, query_slot = positions.repeat_interleave(K), slots.repeat(n)  # (n*K,), row-major (i, k)
    slot_positions = (positions[:, None] + 1 + slots).expand(B, n, K)

    condition, tokens, offset = features, F.pad(input_ids[:, 1:], (0, 1)), torch.zeros_like(input_ids)
    past, past_visible = None, []  # per earlier block: which of its keys each position's later blocks see
    draft_total = rank_total = 0.0
    first = None
    for block in range(num_blocks):
        # block 1 sees earlier positions' slots like committed entries; later blocks see only their own position
        own = block_causal_mask(n, K, device) if block == 0 else row_local_mask(n, K, device)
        mask = torch.cat([v.repeat_interleave(K, dim=1) for v in past_visible] + [own[None].expand(B, -1, -1)], dim=2)
        out = drafter(condition, tokens, slot_positions, mask, past, condition_is_feature=block == 0)
        target_index = positions[None, :, None] + offset[..., None] + 1 + slots  # (B, n, K)
        loss = block_loss(out.logits, out.rank_logits, signals, target_index, drafter.d2t, drafter.config.rank_classes)
        draft_total, rank_total = draft_total + loss.draft, rank_total + loss.rank
        first = first or loss
        if block + 1 == num_blocks:
            break
        M = torch.randint(1, K + 1, (B, n), device=device, generator=generator)
        # keys of this block that later blocks at position i see: slots < M_i at i (and, for block 1, all earlier i)
        visible = (positions[None, :, None] == query_position[None, None, :]) & (
            query_slot[None, None, :] < M[..., None]
        )
        if block == 0:
            visible = visible | (query_position[None, None, :] < positions[None, :, None])
        past_visible.append(visible)  # (B, n, n*K)
        hidden = out.hidden_states  # (B, n, K, H)
        condition = hidden.gather(2, (M - 1)[..., None, None].expand(B, n, 1, hidden.shape[-1]))[:, :, 0]
        offset = offset + M
        tokens = input_ids.gather(1, (positions[None] + 1 + offset).clamp(max=n - 1))
        past = extend_key_values(past, out.key_values)
    return draft_total, rank_total, first


def eagle3_loss(drafter: Eagle3Drafter, batch: dict, signals: TargetSignals, num_steps: int):
    """
    EAGLE-3 training-time test: step 0 runs on target features (entry i = (fc(h_i), x_{i+1}), causal); step s feeds
    position i the drafter's own state from step s-1 with token x_{i+1+s} at position i+s, seeing step 0's entries
    j <= i and its own earlier steps at i — what a depth-(s+1) tree node sees at inference. Step s's weight is 0.8^s.

    Returns:
        The summed draft loss, zero (no rank head), and step 0's `BlockLoss` viewed as K=1.
    """
    input_ids, features = batch["input_ids"], batch["features"]
    B, n = input_ids.shape
    device = input_ids.device
    positions = torch.arange(n, device=device)
    causal = positions[None, :] <= positions[:, None]
    diagonal = torch.eye(n, dtype=torch.bool, device=device)
    hidden, past, total, first = features, None, 0.0, None
    for step in range(num_steps):
        tokens = input_ids.gather(1, (positions + 1 + step).clamp(max=n - 1)[None].expand(B, n))
        own = causal if step == 0 else diagonal
        mask = torch.cat([causal] + [diagonal] * (step - 1) + [own], dim=1) if step else own
        out = drafter(
            hidden, tokens, (positions + step)[None].expand(B, n), mask[None].expand(B, -1, -1), past, step == 0
        )
        target_index = (positions + step + 1)[None, :, None].expand(B, n, 1)
        loss = block_loss(out.logits[:, :, None], None, signals, target_index, drafter.d2t, 1)
        total = total + SLOT_DECAY**step * loss.draft
        first = first or loss
        hidden, past = out.hidden_states, extend_key_values(past, out.key_values)
    return total, torch.zeros((), device=device), first
