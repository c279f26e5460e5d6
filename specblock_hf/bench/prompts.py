"""Benchmark prompts: Spec-Bench `question.jsonl` format (`question_id`, `category`, `turns`)."""

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Prompt:
    question_id: int | str
    category: str
    text: str


def load_spec_bench(
    path: str | Path, per_category: int | None = None, categories: list[str] | None = None
) -> list[Prompt]:
    """
    First turns of a Spec-Bench style jsonl, in file order, at most `per_category` of each category.

    Args:
        path: a jsonl file whose rows hold `question_id`, `category` and `turns` (a list of user messages).
        per_category: keep the first this many prompts of each category (all when None).
        categories: keep only these categories (all when None).
    """
    prompts, seen = [], {}
    with open(path) as handle:
        for line in handle:
            if not line.strip():
                continue
            row = json.loads(line)
            category = row["category"]
            if categories is not None and category not in categories:
                continue
            if per_category is not None and seen.get(category, 0) >= per_category:
                continue
            seen[category] = seen.get(category, 0) + 1
            prompts.append(Prompt(row["question_id"], category, row["turns"][0]))
    return prompts
