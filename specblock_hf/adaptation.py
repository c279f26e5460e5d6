"""
Cost-aware online adaptation (SPEC §8, our design): the drafter's head learns from the verifier's free labels while
it decodes, and only when the expected throughput gain pays for the update.

Every committed drafter entry yields K rows: slot k of the entry at sequence index t is the drafter's (normed) state
that predicted token t + k + 2, and once that token is committed it is the target's own choice there (its argmax when
greedy, its sample when sampling; accepted draft tokens and the correction at the first rejected node alike). The
drafter body is frozen, so these states are exactly what drafting computes; an update trains an additive delta on the
head `lm_head.weight = pristine + delta` over a bounded buffer of recent rows. The pristine weights stay apart, so the
adaptation can be reset, saved, loaded or switched off. Outputs stay lossless: only the drafts change.

The bandit weighs two arms between rounds, "skip" (no cost) and "update": an update is made when
    horizon_tokens * round_seconds * (1 / tau - 1 / (tau + gain)) > update_seconds,
with tau and round_seconds observed, gain = (estimated tau gain per new labelled row) x (rows gathered since the last
update) — an optimistic prior, then a running mean of what updates achieved on held-out rows, floored at a tenth of
the prior so that updates grow rarer but never stop for good — and update_seconds the measured update time. No update
is made when the head already predicts the held-out rows at `ceiling_accuracy`. An update that clearly lowers
held-out acceptance is rolled back at once; one after which the observed tau falls by more than `rollback_margin` is
rolled back later.
"""

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

MODES = ("bandit", "always")
SLOT_DECAY = 0.8  # row weight 0.8^k of slot k, as in training
REFERENCE_ROWS = 256  # `prior_gain` is the gain assumed for an update learning from this many new rows
HELD_OUT_ROWS = 512  # most held-out rows scored per check (the newest)


@dataclass
class AdaptationConfig:
    """
    Args:
        mode: "bandit" (update only when the expected gain exceeds the cost) or "always" (update at every check).
        buffer_rows: most labelled rows kept (newest first out last).
        steps / batch_rows / learning_rate / weight_decay: one update = `steps` Adam steps on `batch_rows` random
            training rows; `weight_decay` pulls the delta towards the pristine head.
        check_every: rounds between two decisions; `min_new_rows` new labelled rows are needed for an update.
        validation_share: newest share of the buffer held out to judge an update.
        horizon_tokens: tokens the drafter is expected to serve after the current call (the adapted head persists
            across calls); the remaining tokens of the call are added.
        prior_gain: tau increase assumed, before any was measured, for an update learning from 256 new rows.
        ceiling_accuracy: no update while the head predicts this share of the held-out rows' first slot.
        rollback_window / rollback_margin: an update after which the mean tau of the next `rollback_window` rounds
            falls below (1 - margin) x that of the `rollback_window` rounds before it is undone.
    """

    mode: str = "bandit"
    buffer_rows: int = 4096
    steps: int = 4
    batch_rows: int = 256
    learning_rate: float = 3e-3
    weight_decay: float = 1e-2
    check_every: int = 8
    min_new_rows: int = 64
    validation_share: float = 0.2
    horizon_tokens: int = 2048
    prior_gain: float = 0.1
    ceiling_accuracy: float = 0.95
    rollback_window: int = 24
    rollback_margin: float = 0.15

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"adaptation mode must be one of {MODES}, got {self.mode!r}.")
        if not 0.0 < self.validation_share < 1.0:
            raise ValueError(f"validation_share must lie in (0, 1), got {self.validation_share}.")
        if min(self.buffer_rows, self.steps, self.batch_rows, self.check_every, self.min_new_rows) < 1:
            raise ValueError("buffer_rows, steps, batch_rows, check_every and min_new_rows must be >= 1.")


@dataclass
class AdaptationStats:
    """
    What adaptation did over the drafter's life (or since `reset`).

    Args:
        updates / rollbacks: updates kept and undone; `skipped` counts decisions not to update, by reason.
        update_time / collect_time: seconds spent in updates and in gathering rows (both inside `generate()`).
        rows: labelled rows gathered; tau_before_first_update / tau_since_first_update: observed acceptance.
        predicted_gain: the held-out tau increase each kept update promised.
    """

    updates: int = 0
    rollbacks: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    update_time: float = 0.0
    collect_time: float = 0.0
    rows: int = 0
    rounds_before_first_update: list[int] = field(default_factory=list, repr=False)
    rounds_since_first_update: list[int] = field(default_factory=list, repr=False)
    predicted_gain: list[float] = field(default_factory=list)

    @property
    def tau_before_first_update(self) -> float | None:
        rounds = self.rounds_before_first_update
        return 1 + sum(rounds) / len(rounds) if rounds else None

    @property
    def tau_since_first_update(self) -> float | None:
        rounds = self.rounds_since_first_update
        return 1 + sum(rounds) / len(rounds) if rounds else None

    def summary(self) -> dict:
        return {
            "updates": self.updates, "rollbacks": self.rollbacks, "skipped": dict(self.skipped),
            "update_time_s": round(self.update_time, 3), "collect_time_s": round(self.collect_time, 4),
            "rows": self.rows, "tau_before_first_update": self.tau_before_first_update,
            "tau_since_first_update": self.tau_since_first_update,
        }  # fmt: skip


class OnlineAdaptation:
    """
    The adaptation state of one drafter: buffer, head delta, optimiser, bandit estimates, statistics. Attach it with
    `drafter.adaptation = OnlineAdaptation(drafter, AdaptationConfig(...))` (every call adapts) or pass
    `adaptation=` to one `generate()` call; `speculative_decode` drives it through `begin`, `observe` and
    `after_round`.
    """

    def __init__(self, drafter, config: AdaptationConfig | None = None):
        self.drafter = drafter
        self.config = config or AdaptationConfig()
        head = drafter.lm_head.weight
        device, (vocab, hidden) = head.device, head.shape
        self.pristine = head.detach().float().clone()  # (Vd, H) fp32; never modified (bf16 -> fp32 is exact)
        self.head_dtype = head.dtype
        self.delta = torch.zeros(vocab, hidden, device=device, requires_grad=True)  # fp32
        self.optimizer = torch.optim.Adam([self.delta], lr=self.config.learning_rate)
        self.draft_id = torch.full((drafter.t2d.shape[0],), -1, dtype=torch.long, device=device)  # target -> draft id
        self.draft_id[drafter.draft_to_target(torch.arange(vocab, device=device))] = torch.arange(vocab, device=device)
        capacity = self.config.buffer_rows
        self.states = torch.zeros(capacity, hidden, device=device)  # normed slot states, fp32, (capacity, H)
        self.labels = torch.zeros(capacity, dtype=torch.long, device=device)  # draft ids, (capacity,)
        self.slots = torch.zeros(capacity, dtype=torch.long, device=device)  # slot k of each row, (capacity,)
        self.order = torch.zeros(capacity, dtype=torch.long, device=device)  # arrival number, for "newest"
        self.filled = self.arrived = self.rows_since_update = 0
        self.recent_rounds: deque[int] = deque(maxlen=self.config.rollback_window)
        self.round_seconds: float | None = None
        self.gain_per_row = self.config.prior_gain / REFERENCE_ROWS  # tau gain per new labelled row, estimated
        self.cost_estimate: float | None = None
        self.watch: dict | None = None  # the last kept update while its observed effect is judged
        self.stats = AdaptationStats()
        self._call: dict = {}

    # ----- collecting rows -------------------------------------------------------------------------------------

    def begin(self, prompt_length: int, max_new_tokens: int) -> None:
        """Start of a `generate()` call: rows are labelled only by generated tokens (index >= `prompt_length`)."""
        self._call = {"prompt_length": prompt_length, "max_new_tokens": max_new_tokens, "pending": [],
                      "generated": 0, "round_started": time.perf_counter(), "updates_before": self.stats.updates}  # fmt: skip

    @torch.no_grad()
    def observe(self, states: torch.Tensor, indices: torch.LongTensor) -> None:
        """
        Args:
            states (`torch.Tensor` of shape `(n, K, H)`): pre-norm slot states of the entries just committed.
            indices (`torch.LongTensor` of shape `(n,)`): sequence index t of each entry's feature token.
        """
        start = time.perf_counter()
        self._call["pending"].append((self.drafter.norm(states).float(), indices))
        self.stats.collect_time += time.perf_counter() - start

    @torch.no_grad()
    def _label(self, sequence: torch.LongTensor, final: bool = False) -> None:
        """
        Buffer the pending entries whose K labels (tokens t + k + 2) are all committed, or, at the end of a call
        (`final`), whatever labels are known. Labels inside the prompt and tokens outside the draft vocabulary are
        skipped.

        Args:
            sequence (`torch.LongTensor` of shape `(seq_len,)`): the committed sequence so far.
        """
        start = time.perf_counter()
        length, still_pending = sequence.shape[0], []
        for normed, indices in self._call["pending"]:
            slots = torch.arange(normed.shape[1], device=indices.device)
            label_index = indices[:, None] + 2 + slots  # (n, K)
            known = label_index < length
            ready = known.all(dim=1) | final  # (n,)
            draft_ids = self.draft_id[sequence[label_index.clamp(max=length - 1)]]
            take = ready[:, None] & known & (label_index >= self._call["prompt_length"]) & (draft_ids >= 0)
            self._push(normed[take], draft_ids[take], slots.expand_as(take)[take])
            if not ready.all():
                still_pending.append((normed[~ready], indices[~ready]))
        self._call["pending"] = still_pending
        self.stats.collect_time += time.perf_counter() - start

    def _push(self, states: torch.Tensor, labels: torch.LongTensor, slots: torch.LongTensor) -> None:
        """Write rows into the ring buffer (the oldest go first)."""
        count, capacity = states.shape[0], self.config.buffer_rows
        if count == 0:
            return
        kept = min(count, capacity)  # of more rows than fit, the newest
        arrival = self.arrived + count - kept + torch.arange(kept, device=states.device)
        where = arrival % capacity
        self.states[where], self.labels[where], self.slots[where] = states[-kept:], labels[-kept:], slots[-kept:]
        self.order[where] = arrival
        self.arrived += count
        self.filled = min(self.filled + count, capacity)
        self.rows_since_update += count
        self.stats.rows += count

    # ----- between rounds --------------------------------------------------------------------------------------

    def after_round(self, sequence: torch.LongTensor, accepted: int, emitted: int) -> None:
        """
        Called by the decode loop after each verified round: records acceptance and timing, and every `check_every`
        rounds labels rows, judges the last update and decides whether to update now.

        Args:
            sequence (`torch.LongTensor` of shape `(seq_len,)`): the committed sequence.
            accepted: draft tokens accepted this round; emitted: tokens the round added.
        """
        now = time.perf_counter()
        elapsed = now - self._call["round_started"]
        self.round_seconds = elapsed if self.round_seconds is None else 0.9 * self.round_seconds + 0.1 * elapsed
        self._call["generated"] += emitted
        self.recent_rounds.append(accepted)
        first_update_done = self.stats.updates + self.stats.rollbacks > 0
        (self.stats.rounds_since_first_update if first_update_done else self.stats.rounds_before_first_update).append(
            accepted
        )
        if self.watch is not None:
            self._judge_last_update(accepted)
        rounds = len(self.stats.rounds_before_first_update) + len(self.stats.rounds_since_first_update)
        if rounds % self.config.check_every == 0:
            self._label(sequence)
            self._decide()
        self._call["round_started"] = time.perf_counter()

    def end(self, sequence: torch.LongTensor) -> int:
        """End of a call: buffer what is known of the pending rows; returns the updates kept during the call."""
        self._label(sequence, final=True)
        return self.stats.updates - self._call["updates_before"]

    # ----- deciding and updating -------------------------------------------------------------------------------

    def _decide(self) -> None:
        if self.rows_since_update < self.config.min_new_rows:
            return self._skip("too few new rows")
        split = self._split()
        if split is None:
            return self._skip("too few new rows")
        train, held_out = split
        before = self._slot_accuracy(held_out, self._head())
        if self.config.mode == "bandit":
            if before[0] >= self.config.ceiling_accuracy:
                return self._skip("at ceiling")
            if self._expected_savings() <= self._expected_cost():
                return self._skip("gain below cost")
        self._update(train, held_out, before)

    def _expected_savings(self) -> float:
        """
        Seconds an update would save over the remaining call and the horizon. Its tau gain is the estimated gain per
        new row times the rows gathered since the last update, so the bandit waits until enough new evidence makes
        an update pay; the per-row estimate never falls below a tenth of the prior, so updates only grow rarer.
        """
        tau = 1 + sum(self.recent_rounds) / max(1, len(self.recent_rounds))
        remaining = max(0, self._call["max_new_tokens"] - self._call["generated"]) + self.config.horizon_tokens
        floor = 0.1 * self.config.prior_gain / REFERENCE_ROWS
        gain = max(self.gain_per_row, floor) * self.rows_since_update
        return remaining * self.round_seconds * (1 / tau - 1 / (tau + gain))

    @torch.no_grad()
    def _expected_cost(self) -> float:
        """Measured seconds per update; before the first, a timed head forward x 3 (backward) x steps."""
        if self.cost_estimate is not None:
            return self.cost_estimate
        rows = self.states[: min(self.filled, self.config.batch_rows)]
        start = time.perf_counter()
        F.linear(rows, self._head()).argmax(dim=-1)
        return 3 * self.config.steps * (time.perf_counter() - start)

    def _split(self) -> tuple[torch.LongTensor, torch.LongTensor] | None:
        """Buffer rows for training and the newest `validation_share` held out; None when either would be tiny."""
        by_age = torch.argsort(self.order[: self.filled])
        held = max(1, int(self.config.validation_share * self.filled))
        if self.filled - held < 16 or held < 8:
            return None
        return by_age[:-held], by_age[-held:][-HELD_OUT_ROWS:]

    def _head(self) -> torch.Tensor:
        return (self.pristine + self.delta).detach()

    @torch.no_grad()
    def _slot_accuracy(self, rows: torch.LongTensor, head: torch.Tensor) -> list[float]:
        """Top-1 accuracy of `head` on `rows`, per slot k = 0, 1, ... (slots without rows end the list)."""
        correct = F.linear(self.states[rows], head).argmax(dim=-1) == self.labels[rows]
        slots = self.slots[rows]
        counts = torch.bincount(slots)
        hits = torch.bincount(slots, weights=correct.float(), minlength=counts.shape[0])
        present = int((counts > 0).cumprod(0).sum())  # slots 0, 1, ... up to the first without rows
        return (hits[:present] / counts[:present]).tolist()

    @staticmethod
    def _chain_tau(accuracy: list[float]) -> float:
        """1 + sum_k prod_{j <= k} accuracy_j: the acceptance length of a single greedy chain."""
        tau, alive = 1.0, 1.0
        for value in accuracy:
            alive *= value
            tau += alive
        return tau

    def _update(self, train: torch.LongTensor, held_out: torch.LongTensor, before: list[float]) -> None:
        start = time.perf_counter()
        snapshot = self.delta.detach().clone()
        weights = SLOT_DECAY ** self.slots.float()
        for _ in range(self.config.steps):
            batch = train[torch.randint(train.shape[0], (min(self.config.batch_rows, train.shape[0]),))]
            with torch.enable_grad():
                logits = F.linear(self.states[batch], self.pristine + self.delta)
                losses = F.cross_entropy(logits, self.labels[batch], reduction="none")
                loss = (losses * weights[batch]).sum() / weights[batch].sum()
                loss = loss + self.config.weight_decay * self.delta.pow(2).mean()
                loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        gain = self._chain_tau(self._slot_accuracy(held_out, self._head())) - self._chain_tau(before)
        if self.config.mode == "bandit" and gain < -1.0 / held_out.shape[0]:  # clearly worse on fresh rows: undo
            self._restore(snapshot)
            self.stats.rollbacks += 1
        else:
            self._write_head()
            self.stats.updates += 1
            self.stats.predicted_gain.append(gain)
            if len(self.recent_rounds) == self.recent_rounds.maxlen:
                self.watch = {"tau_before": 1 + sum(self.recent_rounds) / len(self.recent_rounds), "after": [],
                              "snapshot": snapshot}  # fmt: skip
        self.gain_per_row = 0.5 * self.gain_per_row + 0.5 * gain / max(1, self.rows_since_update)
        self.rows_since_update = 0
        seconds = time.perf_counter() - start
        self.cost_estimate = seconds if self.cost_estimate is None else 0.5 * self.cost_estimate + 0.5 * seconds
        self.stats.update_time += seconds

    def _judge_last_update(self, accepted: int) -> None:
        """Undo the last kept update if the tau observed since falls clearly below the tau before it (bandit)."""
        self.watch["after"].append(accepted)
        if len(self.watch["after"]) < self.config.rollback_window:
            return
        watch, self.watch = self.watch, None
        tau_after = 1 + sum(watch["after"]) / len(watch["after"])
        if self.config.mode == "bandit" and tau_after < (1 - self.config.rollback_margin) * watch["tau_before"]:
            self._restore(watch["snapshot"])
            self.stats.rollbacks += 1
            self.gain_per_row = 0.5 * self.gain_per_row + 0.5 * (tau_after - watch["tau_before"]) / REFERENCE_ROWS

    def _skip(self, reason: str) -> None:
        self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + 1

    # ----- state of the head -----------------------------------------------------------------------------------

    @torch.no_grad()
    def _write_head(self) -> None:
        self.drafter.lm_head.weight.copy_(self._head().to(self.head_dtype))

    @torch.no_grad()
    def _restore(self, delta: torch.Tensor) -> None:
        self.delta.copy_(delta)
        self.optimizer = torch.optim.Adam([self.delta], lr=self.config.learning_rate)
        self._write_head()

    @torch.no_grad()
    def reset(self) -> None:
        """Back to the pristine head, an empty buffer, fresh estimates and statistics."""
        self._restore(torch.zeros_like(self.delta))
        self.filled = self.arrived = self.rows_since_update = 0
        self.recent_rounds.clear()
        self.round_seconds, self.cost_estimate, self.watch = None, None, None
        self.gain_per_row = self.config.prior_gain / REFERENCE_ROWS
        self.stats = AdaptationStats()

    @torch.no_grad()
    def detach(self) -> None:
        """Put the pristine head back in the drafter and stop adapting it (`drafter.adaptation` is cleared)."""
        self.drafter.lm_head.weight.copy_(self.pristine.to(self.head_dtype))
        if getattr(self.drafter, "adaptation", None) is self:
            self.drafter.adaptation = None

    def save(self, path: str | Path) -> None:
        """Write the head delta (safetensors); `load` applies it to the same drafter's pristine head."""
        from safetensors.torch import save_file

        save_file({"lm_head.delta": self.delta.detach().cpu().contiguous()}, str(path))

    @torch.no_grad()
    def load(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        delta = load_file(str(path))["lm_head.delta"]
        if delta.shape != self.delta.shape:
            raise ValueError(
                f"{path} holds a delta of shape {tuple(delta.shape)}; this head is {tuple(self.delta.shape)}."
            )
        self._restore(delta.to(self.delta.device))


def resolve_adaptation(drafter, adaptation) -> OnlineAdaptation | None:
    """
    The adaptation state a call uses: `None` -> the drafter's own (`drafter.adaptation`, if set); `False` -> none;
    a mode string or `AdaptationConfig` -> the drafter's own if it has that config, else a new one attached to the
    drafter (so that it persists across calls); an `OnlineAdaptation` -> itself.
    """
    if adaptation is None:
        return getattr(drafter, "adaptation", None)
    if adaptation is False:
        return None
    if isinstance(adaptation, OnlineAdaptation):
        if adaptation.drafter is not drafter:
            raise ValueError("This OnlineAdaptation belongs to another drafter.")
        return adaptation
    config = AdaptationConfig(mode=adaptation) if isinstance(adaptation, str) else adaptation
    if not isinstance(config, AdaptationConfig):
        raise TypeError(
            f"adaptation must be None, False, a mode {MODES}, an AdaptationConfig or an OnlineAdaptation; got {type(adaptation).__name__}."
        )
    current = getattr(drafter, "adaptation", None)
    if current is None or current.config != config:
        if current is not None:
            current.detach()
        drafter.adaptation = OnlineAdaptation(drafter, config)
    return drafter.adaptation
