"""Side-by-side decoding runs: plain `generate()` and speculative drafters on the same prompts, interleaved."""

import time
from collections import defaultdict
from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..divergence import first_divergence
from .prompts import Prompt

PLAIN = "plain"


@dataclass
class Record:
    """One (prompt, method) run."""

    method: str
    category: str
    question_id: int | str
    new_tokens: int
    seconds: float
    rounds: int = 0
    accepted: int = 0
    draft_s: float = 0.0
    verify_s: float = 0.0
    other_s: float = 0.0
    identical: bool = True
    margin: float | None = None


def run(
    target: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Prompt],
    drafters: dict,
    max_new_tokens: int,
    do_sample: bool = False,
    progress: bool = True,
) -> list[Record]:
    """
    For every prompt, plain `generate()` and then each drafter (in an order rotated prompt by prompt, so that machine
    noise hits all methods alike). Greedy outputs are compared with plain output; a divergence is recorded with the
    target's logit margin there. A warm-up call per method precedes the timed runs.
    """
    from tqdm.auto import tqdm

    settings = {"do_sample": do_sample, "max_new_tokens": max_new_tokens}
    methods = [PLAIN, *drafters]
    records = []
    for index, prompt in enumerate(tqdm(prompts, desc="bench", disable=not progress)):
        input_ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt.text}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"].to(target.device)
        if index == 0:
            for method in methods:
                _generate(target, input_ids, drafters.get(method), {"max_new_tokens": 4})
        order = methods[index % len(methods) :] + methods[: index % len(methods)]
        outputs = {}
        for method in order:
            drafter = drafters.get(method)
            start = time.perf_counter()
            outputs[method] = _generate(target, input_ids, drafter, settings)
            seconds = time.perf_counter() - start
            record = Record(
                method, prompt.category, prompt.question_id, outputs[method].shape[1] - input_ids.shape[1], seconds
            )
            if drafter is not None:
                stats = drafter.generation_stats
                record.rounds, record.accepted = stats.rounds, sum(stats.accepted)
                record.draft_s, record.verify_s, record.other_s = stats.draft_time, stats.verify_time, stats.other_time
            records.append(record)
        if not do_sample:
            for record in records[-len(methods) :]:
                divergence = first_divergence(target, input_ids.shape[1], outputs[PLAIN], outputs[record.method])
                record.identical = divergence is None and outputs[PLAIN].shape == outputs[record.method].shape
                record.margin = None if divergence is None else divergence.margin
    return records


def _generate(target, input_ids, drafter, settings) -> torch.LongTensor:
    if drafter is None:
        return target.generate(input_ids, **settings)
    return target.generate(input_ids, **settings, assistant_model=drafter)


def summarize(records: list[Record]) -> dict:
    """Per method and category (and "overall"): tokens/s, speedup vs plain, tau, draft ms/round and share, mismatches."""
    groups = defaultdict(list)
    for record in records:
        groups[(record.method, record.category)].append(record)
        groups[(record.method, "overall")].append(record)
    summary = {}
    for (method, category), group in groups.items():
        tokens = sum(r.new_tokens for r in group)
        seconds = sum(r.seconds for r in group)
        rounds = sum(r.rounds for r in group)
        loop = sum(r.draft_s + r.verify_s + r.other_s for r in group)
        plain = groups[(PLAIN, category)]
        plain_speed = sum(r.new_tokens for r in plain) / sum(r.seconds for r in plain)
        summary.setdefault(method, {})[category] = {
            "prompts": len(group),
            "tokens_per_s": tokens / seconds,
            "speedup": tokens / seconds / plain_speed,
            "tau": (sum(r.accepted for r in group) + rounds) / rounds if rounds else None,
            "draft_ms_per_round": 1e3 * sum(r.draft_s for r in group) / rounds if rounds else None,
            "verify_ms_per_round": 1e3 * sum(r.verify_s for r in group) / rounds if rounds else None,
            "draft_share": sum(r.draft_s for r in group) / loop if loop else None,
            "mismatches": sum(not r.identical for r in group),
            "largest_margin": max((abs(r.margin) for r in group if r.margin is not None), default=None),
        }
    return summary


def markdown_table(summary: dict) -> str:
    """One row per (method, category)."""
    lines = [
        "| method | category | prompts | tok/s | speedup | τ | draft ms/round | verify ms/round | draft share | mismatches (max margin) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, categories in summary.items():
        for category in sorted(categories, key=lambda c: (c == "overall", c)):
            row = categories[category]

            def fmt(value, spec):
                return "–" if value is None else format(value, spec)

            lines.append(
                f"| {method} | {category} | {row['prompts']} | {row['tokens_per_s']:.1f} | {row['speedup']:.2f}x | "
                f"{fmt(row['tau'], '.2f')} | {fmt(row['draft_ms_per_round'], '.1f')} | "
                f"{fmt(row['verify_ms_per_round'], '.1f')} | {fmt(row['draft_share'], '.0%')} | "
                f"{row['mismatches']} ({fmt(row['largest_margin'], '.3f')}) |"
            )
    return "\n".join(lines)


def records_as_dicts(records: list[Record]) -> list[dict]:
    return [asdict(r) for r in records]
