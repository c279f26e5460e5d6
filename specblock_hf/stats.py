"""What a speculative call did: rounds, acceptance lengths and where the time went."""

import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class GenerationStats:
    """
    Statistics of one speculative `generate()` call, readable afterwards as `drafter.generation_stats`.

    Args:
        accepted: accepted draft tokens per round (the round also emits one target token).
        accepted_keep_ranks: per round, the pruning ranks of the accepted draft nodes (see `DraftTree.keep_rank`).
        draft_time: seconds in drafter forwards and tree growth (committing entries + proposing trees).
        verify_time: seconds in target forwards over trees (the prefill is counted in `prefill_time`).
        adapt_time: seconds in online adaptation between rounds (labelling rows, deciding, updating).
        adaptation_updates: drafter updates online adaptation kept during this call.
        total_time: seconds of the whole call, prefill included.
    """

    accepted: list[int] = field(default_factory=list)
    accepted_keep_ranks: list[list[int]] = field(default_factory=list, repr=False)
    new_tokens: int = 0
    prefill_time: float = 0.0
    draft_time: float = 0.0
    verify_time: float = 0.0
    adapt_time: float = 0.0
    adaptation_updates: int = 0
    total_time: float = 0.0
    started: float = field(default_factory=time.perf_counter, repr=False)

    @contextmanager
    def timed(self, phase: str, device: torch.device):
        """Add the wall time of the block to `<phase>_time` (after a CUDA sync, so GPU work is counted where it ran)."""
        start = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        setattr(self, f"{phase}_time", getattr(self, f"{phase}_time") + time.perf_counter() - start)

    def finish(self, new_tokens: int) -> None:
        self.new_tokens = new_tokens
        self.total_time = time.perf_counter() - self.started

    @property
    def rounds(self) -> int:
        return len(self.accepted)

    @property
    def mean_acceptance_length(self) -> float:
        """τ: mean over rounds of (accepted draft tokens + 1)."""
        return sum(self.accepted) / len(self.accepted) + 1 if self.accepted else 0.0

    @property
    def acceptance_histogram(self) -> dict[int, int]:
        """Rounds per number of accepted draft tokens."""
        return dict(sorted(Counter(self.accepted).items()))

    @property
    def other_time(self) -> float:
        """Decode-loop time outside drafter and target forwards: masks, acceptance, cache commits, Python."""
        return self.total_time - self.prefill_time - self.draft_time - self.verify_time - self.adapt_time

    def summary(self) -> str:
        loop = max(self.total_time - self.prefill_time, 1e-9)
        return (
            f"{self.new_tokens} tokens in {self.rounds} rounds, tau={self.mean_acceptance_length:.2f}, "
            f"{self.new_tokens / max(self.total_time, 1e-9):.1f} tok/s; per round: draft "
            f"{1e3 * self.draft_time / max(self.rounds, 1):.1f} ms ({100 * self.draft_time / loop:.0f}%), verify "
            f"{1e3 * self.verify_time / max(self.rounds, 1):.1f} ms ({100 * self.verify_time / loop:.0f}%), other "
            f"{1e3 * self.other_time / max(self.rounds, 1):.1f} ms ({100 * self.other_time / loop:.0f}%)"
            + (f", adapt {1e3 * self.adapt_time / max(self.rounds, 1):.1f} ms" if self.adapt_time else "")
        )
