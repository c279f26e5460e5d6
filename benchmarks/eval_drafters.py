"""Shipped drafters vs plain generate() on Spec-Bench prompts (SmolLM2-135M-Instruct, bf16, greedy), interleaved.

    python benchmarks/eval_drafters.py --per-category 8 --max-new-tokens 128 \
        --drafter specblock=specblock_hf/drafters/SmolLM2-135M-Instruct-SpecBlock \
        --drafter eagle3=specblock_hf/drafters/SmolLM2-135M-Instruct-EAGLE3 --out benchmarks/results/drafters
"""

import argparse
import json
import platform
from dataclasses import replace
from pathlib import Path

import torch

import specblock_hf
from specblock_hf.bench.prompts import load_spec_bench
from specblock_hf.bench.runner import (
    PLAIN,
    drafter_method,
    markdown_table,
    plain_method,
    records_as_dicts,
    run,
    summarize,
)
from specblock_hf.models import load_target

DEFAULT_PROMPTS = Path(__file__).resolve().parents[2] / "shared/data/spec_bench_questions.jsonl"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", default=str(DEFAULT_PROMPTS))
    parser.add_argument("--per-category", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--drafter", action="append", default=[], help="NAME=PATH, repeatable")
    parser.add_argument("--budget", type=int, default=None, help="tree budget for every drafter (default: CPU default)")
    parser.add_argument("--out", required=True, help="output prefix: writes PREFIX.json and PREFIX.md")
    args = parser.parse_args()

    target, tokenizer = load_target(dtype=torch.bfloat16)
    specblock_hf.enable(target)
    methods = {PLAIN: plain_method}
    for item in args.drafter:
        name, path = item.split("=", 1)
        drafter = specblock_hf.load_drafter(path, target=target)
        if args.budget is not None:
            drafter.tree_config = specblock_hf.generation.default_tree_config(drafter, target.device)
            field = "budget" if hasattr(drafter.tree_config, "budget") else "total_tokens"
            drafter.tree_config = replace(drafter.tree_config, **{field: args.budget})
        methods[name] = drafter_method(drafter)
    prompts = load_spec_bench(args.prompts, per_category=args.per_category)
    records = run(target, tokenizer, prompts, methods, args.max_new_tokens)
    summary = summarize(records)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    header = (
        f"SmolLM2-135M-Instruct bf16 on {target.device} ({machine}); {len(prompts)} Spec-Bench prompts "
        f"({args.per_category} per category), greedy, max_new_tokens={args.max_new_tokens}; drafters: "
        + ", ".join(f"{n}={p}" for n, p in (i.split("=", 1) for i in args.drafter))
    )
    table = markdown_table(summary)
    print(header + "\n\n" + table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(header + "\n\n" + table + "\n")
    out.with_suffix(".json").write_text(
        json.dumps({"header": header, "summary": summary, "records": records_as_dicts(records)}, indent=2)
    )


if __name__ == "__main__":
    main()
