"""Side-by-side decoding runs: plain `generate()` and speculative drafters on the same prompts, interleaved."""

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

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
    near_tie: bool | None = None
    histogram: dict[int, int] = field(default_factory=dict)  # accepted length (drafts + 1) -> rounds
    adapt_s: float = 0.0
    updates: int = 0  # adaptation updates kept during this call


Method = Callable[[PreTrainedModel, torch.LongTensor, dict], tuple[torch.LongTensor, object]]


def plain_method(target, input_ids, settings):
    """Plain `generate()`: the baseline every speedup is measured against."""
    return target.generate(input_ids, **settings), None


def prompt_lookup_method(num_tokens: int = 10) -> Method:
    """Hugging Face prompt lookup decoding (n-gram drafts copied from the prompt)."""

    def method(target, input_ids, settings):
        return target.generate(input_ids, **settings, prompt_lookup_num_tokens=num_tokens), None

    return method


def assisted_method(assistant: PreTrainedModel) -> Method:
    """Hugging Face assisted generation with a small model of the same tokenizer."""

    def method(target, input_ids, settings):
        return target.generate(input_ids, **settings, assistant_model=assistant), None

    return method


def drafter_method(drafter, tree_config=None, adaptation=False) -> Method:
    """
    Tree speculation with one of our drafters (the target must be `enable`d), with its own tree shape if given, and
    online adaptation ("bandit", "always", an `AdaptationConfig`; False for none) that persists from prompt to prompt.
    """

    def method(target, input_ids, settings):
        if tree_config is not None:
            drafter.tree_config = tree_config
        output = target.generate(input_ids, **settings, assistant_model=drafter, adaptation=adaptation)
        return output, drafter.generation_stats

    return method


def run(
    target: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Prompt],
    methods: dict[str, Method],
    max_new_tokens: int,
    do_sample: bool = False,
    progress: bool = True,
) -> list[Record]:
    """
    For every prompt, every method, in an order rotated prompt by prompt so that machine noise hits all methods
    alike; `methods` must include `PLAIN`. Greedy outputs are compared with plain output; a divergence is recorded
    with the target's logit margin there. One warm-up call per method precedes the timed runs.
    """
    from tqdm.auto import tqdm

    settings = {"do_sample": do_sample, "max_new_tokens": max_new_tokens}
    if do_sample:
        settings |= {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
    names = list(methods)
    records = []
    for index, prompt in enumerate(tqdm(prompts, desc="bench", disable=not progress)):
        input_ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt.text}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"].to(target.device)
        if index == 0:
            for method in methods.values():
                method(target, input_ids, {**settings, "max_new_tokens": 4})
        outputs = {}
        for name in names[index % len(names) :] + names[: index % len(names)]:
            start = time.perf_counter()
            outputs[name], stats = methods[name](target, input_ids, settings)
            seconds = time.perf_counter() - start
            record = Record(
                name, prompt.category, prompt.question_id, outputs[name].shape[1] - input_ids.shape[1], seconds
            )
            if stats is not None:
                record.rounds, record.accepted = stats.rounds, sum(stats.accepted)
                record.draft_s, record.verify_s, record.other_s = stats.draft_time, stats.verify_time, stats.other_time
                record.histogram = dict(sorted(Counter(a + 1 for a in stats.accepted).items()))
                record.adapt_s, record.updates = stats.adapt_time, stats.adaptation_updates
            records.append(record)
        if not do_sample:
            for record in records[-len(names) :]:
                divergence = first_divergence(target, input_ids.shape[1], outputs[PLAIN], outputs[record.method])
                record.identical = divergence is None and outputs[PLAIN].shape == outputs[record.method].shape
                record.margin = None if divergence is None else divergence.margin
                record.near_tie = None if divergence is None else divergence.is_near_tie()
    return records


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
            "not_near_ties": sum(r.near_tie is False for r in group),
            "largest_margin": max((abs(r.margin) for r in group if r.margin is not None), default=None),
            "histogram": dict(sorted(sum((Counter(r.histogram) for r in group), Counter()).items())),
            "adapt_ms_per_round": 1e3 * sum(r.adapt_s for r in group) / rounds if rounds else None,
            "updates": sum(r.updates for r in group),
        }
    return summary


def markdown_table(summary: dict) -> str:
    """One row per (method, category)."""
    lines = [
        "| method | category | prompts | tok/s | speedup | τ | draft ms/round | verify ms/round | draft share | mismatches (max margin) | not near-ties |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
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
                f"{row['mismatches']} ({fmt(row['largest_margin'], '.3f')}) | {row['not_near_ties']} |"
            )
    return "\n".join(lines)


def histogram_table(summary: dict) -> str:
    """Accepted length per round (drafts + 1) over all prompts: share of rounds, one row per speculative method."""
    methods = [m for m, categories in summary.items() if categories["overall"]["histogram"]]
    if not methods:
        return ""
    lengths = sorted({int(n) for m in methods for n in summary[m]["overall"]["histogram"]})
    lines = ["| method | " + " | ".join(f"τ={n}" for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for method in methods:
        counts = {int(n): c for n, c in summary[method]["overall"]["histogram"].items()}
        total = sum(counts.values())
        lines.append(f"| {method} | " + " | ".join(f"{counts.get(n, 0) / total:.1%}" for n in lengths) + " |")
    return "\n".join(lines)


def adaptation_table(summary: dict) -> str:
    """Updates made and time spent adapting, for methods that adapted (empty when none did)."""
    rows = [(m, c["overall"]) for m, c in summary.items() if c["overall"].get("adapt_ms_per_round")]
    if not rows:
        return ""
    lines = ["| method | tok/s | speedup | τ | updates | adapt ms/round |", "|---|---|---|---|---|---|"]
    for method, row in rows:
        lines.append(
            f"| {method} | {row['tokens_per_s']:.1f} | {row['speedup']:.2f}x | {row['tau']:.2f} | {row['updates']} | "
            f"{row['adapt_ms_per_round']:.2f} |"
        )
    return "\n".join(lines)


def records_as_dicts(records: list[Record]) -> list[dict]:
    return [asdict(r) for r in records]
