"""
Cost-aware online adaptation (SPEC §8, our design): the drafter's head learns from the verifier's free labels while
it decodes, and only when the expected throughput gain pays for the update.

Every committed drafter entry yields K rows: slot k of the entry at sequence index t is the drafter's (normed) state
that predicted token t + k + 2, and once that token is committed it is the target's own choice there (its argmax when
greedy, its sample when sampling; accepted draft tokens and the correction at the first rejected node alike). The
drafter body is frozen, so these states are exactly what drafting computes; an update is one (or a few) AdamW steps,
in bf16 autocast, on an additive fp32 delta to the head, `lm_head.weight = pristine + delta`, over random rows of a
bounded buffer of recent rows (the newest included). The pristine weights stay apart, so the adaptation can be reset,
saved, loaded or switched off. Outputs stay lossless: only the drafts change.

The bandit measures what adaptation really buys on the objective itself, the acceptance of the real tree (rank head
and all): now and then (every `explore_every` checks while the verdict is uncertain, four times rarer once it is
clear) it drafts one check window with the pristine head, so the rounds of the two heads interleave over the same
stream and G = mean accepted (adapted) - mean accepted (pristine) is an A/B estimate of the delta's tau gain. One
update's gain is estimated as G per update made so far, shrunk towards the optimistic `prior_gain` while few were
made (a single update's effect is far too small to measure on its own). Between rounds the bandit weighs "skip" (no
cost) against "update", and updates when
    remaining_tokens * round_seconds * (1 / tau - 1 / (tau + gain)) > update_seconds,
with tau and round_seconds observed, update_seconds measured, and remaining_tokens the rest of the call plus the
larger of `horizon_tokens` and the tokens served so far (a stream that has lasted N tokens is expected to last about
N more). So updates stop when adaptation does not pay (no gain over the pristine head, a short stream, or a head at
`ceiling_accuracy` on fresh rows), and the estimate drifts back towards the prior as untrained rows accumulate.
Recovery: an update that turns clearly more fresh rows (rows that arrived after it, never trained on) wrong than right
is undone at the next check (a sign test at `rollback_z`), and the whole delta is dropped — and the prior halved —
when the pristine head's rounds accept clearly more (G below -`rollback_z` standard errors).
"""

import math
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

MODES = ("bandit", "always")
SLOT_DECAY = 0.8  # row weight 0.8^k of slot k, as in training
ACCURACY_MEMORY = 0.95  # per check, the weight of the past in the running fresh-row accuracy (for the ceiling)
RECENT_ROUNDS = 32  # rounds over which the observed tau is averaged
PRIOR_UPDATES = 4  # the prior gain counts as this many updates' worth of evidence
AB_ROUNDS = 2048  # newest rounds per head kept for the A/B estimate
MIN_AB_ROUNDS = 32  # pristine rounds needed before G is trusted


@dataclass
class AdaptationConfig:
    """
    Args:
        mode: "bandit" (update only when the expected gain exceeds the cost) or "always" (update at every check).
        buffer_rows: most labelled rows kept (the oldest leave first).
        steps / batch_rows / learning_rate / weight_decay: one update = `steps` AdamW steps on `batch_rows` random
            buffer rows; `weight_decay` pulls the delta towards the pristine head.
        check_every: rounds between two decisions; `min_new_rows` new labelled rows are needed for an update.
        horizon_tokens: tokens the drafter is expected to serve after the current call (the adapted head persists
            across calls); the remaining tokens of the call are added.
        prior_gain: tau increase assumed for an update before any was measured; the estimate drifts back to it as
            `buffer_rows` untrained rows accumulate.
        ceiling_accuracy: no update while the head predicts this share of the fresh rows' first slot.
        rollback_z: an update is undone when, on fresh rows, it turned `rollback_z` standard deviations more
            predictions wrong than right; the whole delta when its A/B gain is below -`rollback_z` standard errors.
        explore_every: checks between two pristine-head windows while the A/B verdict is uncertain (4x that once
            |G| exceeds 3 standard errors).
    """

    mode: str = "bandit"
    buffer_rows: int = 4096
    steps: int = 1
    batch_rows: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    check_every: int = 8
    min_new_rows: int = 32
    horizon_tokens: int = 2048
    prior_gain: float = 0.02
    ceiling_accuracy: float = 0.95
    rollback_z: float = 2.0
    explore_every: int = 6

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"adaptation mode must be one of {MODES}, got {self.mode!r}.")
        sizes = (self.buffer_rows, self.steps, self.batch_rows, self.check_every, self.min_new_rows, self.explore_every)
        if min(sizes) < 1:
            raise ValueError(
                f"buffer_rows, steps, batch_rows, check_every, min_new_rows and explore_every must be >= 1; got {sizes}."
            )
        if self.rollback_z <= 0:
            raise ValueError(f"rollback_z must be > 0, got {self.rollback_z}.")


@dataclass
class AdaptationStats:
    """
    What adaptation did over the drafter's life (or since `reset`).

    Args:
        updates / rollbacks / resets: updates kept, updates undone, and returns to the pristine head; `skipped`
            counts decisions not to update, by reason.
        update_time / collect_time: seconds spent deciding and updating, and gathering rows (inside `generate()`).
        rows: labelled rows gathered; tau_before_first_update / tau_since_first_update: observed acceptance.
        gain_over_pristine: the latest A/B tau gain of the adapted head over the pristine one (None until measured);
            exploration_rounds: rounds drafted with the pristine head to measure it.
    """

    updates: int = 0
    rollbacks: int = 0
    resets: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    update_time: float = 0.0
    collect_time: float = 0.0
    rows: int = 0
    rounds_before_first_update: list[int] = field(default_factory=list, repr=False)
    rounds_since_first_update: list[int] = field(default_factory=list, repr=False)
    gain_over_pristine: float | None = None
    exploration_rounds: int = 0

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
            "updates": self.updates, "rollbacks": self.rollbacks, "resets": self.resets, "skipped": dict(self.skipped),
            "update_time_s": round(self.update_time, 3), "collect_time_s": round(self.collect_time, 4),
            "rows": self.rows, "tau_before_first_update": self.tau_before_first_update,
            "tau_since_first_update": self.tau_since_first_update,
            "gain_over_pristine": self.gain_over_pristine, "exploration_rounds": self.exploration_rounds,
        }  # fmt: skip


class OnlineAdaptation:
    """
    The adaptation state of one drafter: buffer, head delta, optimiser, bandit estimates, statistics. Attach it with
    `drafter.adaptation = OnlineAdaptation(drafter, AdaptationConfig(...))` (every call adapts) or pass
    `adaptation=` to one `generate()` call; `speculative_decode` drives it through `begin`, `observe`,
    `after_round` and `end`.
    """

    def __init__(self, drafter, config: AdaptationConfig | None = None):
        self.drafter = drafter
        self.config = config or AdaptationConfig()
        head = drafter.lm_head.weight
        device, (vocab, hidden) = head.device, head.shape
        self.pristine = head.detach().float().clone()  # (Vd, H) fp32; never modified (bf16 -> fp32 is exact)
        self.pristine_head = head.detach().clone()  # (Vd, H) in the drafter's dtype, as drafting uses it
        self.delta = torch.zeros(vocab, hidden, device=device, requires_grad=True)  # fp32
        self.delta_active = False  # whether the delta is non-zero (no A/B rounds or pristine windows otherwise)
        self.optimizer = self._new_optimizer()
        self.draft_id = torch.full((drafter.t2d.shape[0],), -1, dtype=torch.long, device=device)  # target -> draft id
        self.draft_id[drafter.draft_to_target(torch.arange(vocab, device=device))] = torch.arange(vocab, device=device)
        capacity = self.config.buffer_rows
        self.states = torch.zeros(capacity, hidden, device=device)  # normed slot states, fp32, (capacity, H)
        self.labels = torch.zeros(capacity, dtype=torch.long, device=device)  # draft ids, (capacity,)
        self.slots = torch.zeros(capacity, dtype=torch.long, device=device)  # slot k of each row, (capacity,)
        self.order = torch.zeros(capacity, dtype=torch.long, device=device)  # arrival number, for "newest"
        self._fresh_state()
        self.stats = AdaptationStats()
        self._call: dict = {}

    def _fresh_state(self) -> None:
        """Empty buffer and estimates (construction and `reset`)."""
        self.filled = self.arrived = self.rows_since_update = self.checked = 0
        self.recent_rounds: deque[int] = deque(maxlen=RECENT_ROUNDS)
        self.round_seconds: float | None = None
        self.cost_estimate: float | None = None
        self.served = self.updates_since_reset = 0  # tokens generated and updates kept since construction / reset
        slots, device = getattr(self.drafter, "block_size", 1), self.states.device
        self.fresh_rows, self.fresh_hits = torch.zeros(2, slots, device=device)  # decayed fresh rows / hits per slot
        self.prior_gain = self.config.prior_gain  # halved at each return to the pristine head
        self.window: list[int] = []  # accepted per round since the last check
        self.exploring = False  # whether the current window drafts with the pristine head
        self.checks_since_exploring = 0
        self.ab_rounds = {"adapted": deque(maxlen=AB_ROUNDS), "pristine": deque(maxlen=AB_ROUNDS)}
        self.verdict: tuple[float | None, float] = (None, math.inf)  # (G, its standard error) at the last check
        self.pending: dict | None = None  # the last update until fresh rows judge it

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([self.delta], lr=self.config.learning_rate, weight_decay=self.config.weight_decay)

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
        rounds labels rows, judges the head on the fresh ones and decides whether to update now.

        Args:
            sequence (`torch.LongTensor` of shape `(seq_len,)`): the committed sequence.
            accepted: draft tokens accepted this round; emitted: tokens the round added.
        """
        now = time.perf_counter()
        elapsed = now - self._call["round_started"]
        self.round_seconds = elapsed if self.round_seconds is None else 0.9 * self.round_seconds + 0.1 * elapsed
        self._call["generated"] += emitted
        self.served += emitted
        self.recent_rounds.append(accepted)
        self.window.append(accepted)
        first_update_done = self.stats.updates + self.stats.rollbacks > 0
        (self.stats.rounds_since_first_update if first_update_done else self.stats.rounds_before_first_update).append(
            accepted
        )
        rounds = len(self.stats.rounds_before_first_update) + len(self.stats.rounds_since_first_update)
        if rounds % self.config.check_every == 0:
            self._label(sequence)
            self._check()
            self.stats.update_time += time.perf_counter() - now
        self._call["round_started"] = time.perf_counter()

    def end(self, sequence: torch.LongTensor) -> int:
        """
        End of a call: buffer what is known of the pending rows and close the window (the drafter leaves with the
        adapted head); returns the updates kept during the call.
        """
        self._label(sequence, final=True)
        self._close_window()
        return self.stats.updates - self._call["updates_before"]

    # ----- judging and deciding --------------------------------------------------------------------------------

    def _check(self) -> None:
        """One decision point: "always" updates given enough new rows; the bandit first judges, then weighs."""
        if self.config.mode == "always":
            if self.rows_since_update >= self.config.min_new_rows:
                self._update()
            return
        self._close_window()
        fresh = self._take_fresh()
        if fresh.numel():
            self._judge(fresh)
        self._weigh()
        self._maybe_explore()

    def _weigh(self) -> None:
        """The bandit's choice between "skip" and "update"."""
        if self.rows_since_update < self.config.min_new_rows:
            return self._skip("too few new rows")
        if self.pending is not None:
            return self._skip("last update not judged yet")
        accuracy = self._fresh_accuracy()
        if accuracy and accuracy[0] >= self.config.ceiling_accuracy:
            return self._skip("at ceiling")
        if self._expected_savings() <= self._expected_cost():
            return self._skip("gain below cost")
        self._update()

    def _take_fresh(self) -> torch.LongTensor:
        """Buffer positions of the rows that arrived since the last check (never trained on), oldest first."""
        first = max(self.checked, self.arrived - self.config.buffer_rows)
        self.checked = self.arrived
        return torch.arange(first, self.arrived, device=self.states.device) % self.config.buffer_rows

    @torch.no_grad()
    def _judge(self, fresh: torch.LongTensor) -> None:
        """
        Score the fresh rows with the current head (running accuracy per slot, for the ceiling) and, when an update
        awaits judgment, with the head before it: undo the update if it made clearly more predictions wrong than right.
        """
        slots = self.slots[fresh]
        current = self._correct(fresh, self.drafter.lm_head.weight)  # (n,) bool
        size = self.fresh_rows.shape[0]
        self.fresh_rows = ACCURACY_MEMORY * self.fresh_rows + torch.bincount(slots, minlength=size)
        self.fresh_hits = ACCURACY_MEMORY * self.fresh_hits + torch.bincount(slots, current.float(), size)
        if self.pending is None:
            return
        pending, self.pending = self.pending, None
        before = self._correct(fresh, pending["head"])
        if self._clearly_worse(wins=int((current & ~before).sum()), losses=int((before & ~current).sum())):
            self._restore(pending["delta"])
            self.stats.rollbacks += 1
            self.stats.updates -= 1
            self.updates_since_reset -= 1

    def _close_window(self) -> None:
        """File the window's rounds under the head that drafted them; end a pristine window; test the delta."""
        if self.delta_active:
            self.ab_rounds["pristine" if self.exploring else "adapted"].extend(self.window)
        if self.exploring:
            self.stats.exploration_rounds += len(self.window)
            self.exploring = False
            self._write_head()
        self.window = []
        self.verdict = gain, error = self._ab_gain()
        if gain is None:
            return  # the last verdict (if any) holds until new evidence
        self.stats.gain_over_pristine = gain
        if gain < -self.config.rollback_z * error:
            self._restore(torch.zeros_like(self.delta))
            self.prior_gain /= 2
            self.updates_since_reset = 0
            for rounds in self.ab_rounds.values():
                rounds.clear()  # that evidence was about the dropped delta
            self.verdict = (None, math.inf)
            self.stats.resets += 1

    def _ab_gain(self) -> tuple[float | None, float]:
        """G = mean accepted per round with the adapted head minus with the pristine head, and its standard error."""
        adapted, pristine = self.ab_rounds["adapted"], self.ab_rounds["pristine"]
        if len(pristine) < MIN_AB_ROUNDS or len(adapted) < MIN_AB_ROUNDS:
            return None, math.inf
        error = math.sqrt(sum(statistics.variance(rounds) / len(rounds) for rounds in (adapted, pristine)))
        return statistics.fmean(adapted) - statistics.fmean(pristine), error

    def _maybe_explore(self) -> None:
        """Draft the next window with the pristine head, often while the A/B verdict is uncertain, rarely after."""
        if not self.delta_active:
            return
        self.checks_since_exploring += 1
        gain, error = self.verdict
        clear = gain is not None and abs(gain) > 3 * error
        if self.checks_since_exploring >= self.config.explore_every * (4 if clear else 1):
            self.checks_since_exploring = 0
            self.exploring = True
            with torch.no_grad():
                self.drafter.lm_head.weight.copy_(self.pristine_head)

    def _correct(self, rows: torch.LongTensor, head: torch.Tensor) -> torch.BoolTensor:
        """Whether `head` (Vd, H) predicts each row's label, computed in the head's dtype as drafting does."""
        return F.linear(self.states[rows].to(head.dtype), head).argmax(dim=-1) == self.labels[rows]

    def _clearly_worse(self, wins: float, losses: float) -> bool:
        """Sign test: more losses than wins by `rollback_z` standard deviations (sqrt of the flips)."""
        return losses > wins and losses - wins > self.config.rollback_z * math.sqrt(wins + losses)

    def _fresh_accuracy(self) -> list[float]:
        """Running fresh-row accuracy per slot k = 0, 1, ... (slots without rows end the list)."""
        present = int((self.fresh_rows > 0).cumprod(0).sum())
        return (self.fresh_hits[:present] / self.fresh_rows[:present]).tolist()

    def _expected_savings(self) -> float:
        """
        Seconds one more update would save: its estimated tau gain (the A/B gain G per update so far, shrunk towards
        the prior while few were made; drifting back to the prior as untrained rows accumulate) over the remaining
        tokens.
        """
        made, measured = self.updates_since_reset, self.stats.gain_over_pristine
        if measured is None:  # not measured yet: the prior per update
            gain = self.prior_gain
        else:
            gain = (PRIOR_UPDATES * self.prior_gain + measured) / (PRIOR_UPDATES + made)
        staleness = min(1.0, self.rows_since_update / self.config.buffer_rows)
        gain += max(0.0, self.prior_gain - gain) * staleness
        if gain <= 0:
            return 0.0
        tau = 1 + sum(self.recent_rounds) / max(1, len(self.recent_rounds))
        remaining = max(0, self._call["max_new_tokens"] - self._call["generated"])
        remaining += max(self.config.horizon_tokens, self.served)
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

    # ----- updating --------------------------------------------------------------------------------------------

    def _head(self) -> torch.Tensor:
        return (self.pristine + self.delta).detach()

    def _update(self) -> None:
        """`steps` AdamW steps on random buffer rows (bf16 autocast), slot k weighted 0.8^k; bandit: to be judged."""
        start = time.perf_counter()
        if self.config.mode == "bandit":
            self.pending = {"delta": self.delta.detach().clone(), "head": self.drafter.lm_head.weight.detach().clone()}
        device = self.states.device
        for _ in range(self.config.steps):
            batch = torch.randint(self.filled, (min(self.config.batch_rows, self.filled),), device=device)
            weights = SLOT_DECAY ** self.slots[batch].float()
            with torch.enable_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                logits = F.linear(self.states[batch], self.pristine + self.delta)
            with torch.enable_grad():
                losses = F.cross_entropy(logits.float(), self.labels[batch], reduction="none")
                ((losses * weights).sum() / weights.sum()).backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self._write_head()
        self.delta_active = True
        self.stats.updates += 1
        self.updates_since_reset += 1
        self.rows_since_update = 0
        seconds = time.perf_counter() - start
        self.cost_estimate = seconds if self.cost_estimate is None else 0.7 * self.cost_estimate + 0.3 * seconds

    def _skip(self, reason: str) -> None:
        self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + 1

    # ----- state of the head -----------------------------------------------------------------------------------

    @torch.no_grad()
    def _write_head(self) -> None:
        self.drafter.lm_head.weight.copy_(self._head().to(self.pristine_head.dtype))

    @torch.no_grad()
    def _restore(self, delta: torch.Tensor) -> None:
        self.delta.copy_(delta)
        self.delta_active = bool(delta.any())
        self.optimizer = self._new_optimizer()
        self._write_head()

    @torch.no_grad()
    def reset(self) -> None:
        """Back to the pristine head, an empty buffer, fresh estimates and statistics."""
        self._restore(torch.zeros_like(self.delta))
        self._fresh_state()
        self.stats = AdaptationStats()

    @torch.no_grad()
    def detach(self) -> None:
        """Put the pristine head back in the drafter and stop adapting it (`drafter.adaptation` is cleared)."""
        self.drafter.lm_head.weight.copy_(self.pristine_head)
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
