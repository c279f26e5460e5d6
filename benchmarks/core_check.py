"""Core check on the real default target: greedy speculative vs plain generate(), interleaved prompt by prompt.

Reports, per prompt and overall: identical or not (and the target's logit margin at the first divergence), tau,
tokens/s of both, and the round split into drafter forwards, target forward and everything else.

    python benchmarks/core_check.py --per-category 2 --max-new-tokens 64 --out benchmarks/results/core_check.json
"""

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import specblock_hf
from specblock_hf.bench.prompts import load_spec_bench
from specblock_hf.demo import load_drafter
from specblock_hf.divergence import BF16_NEAR_TIE_MARGIN, first_divergence
from specblock_hf.models import load_target

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--prompts", default=str(Path(__file__).resolve().parents[2] / "shared/data/spec_bench_questions.jsonl")
    )
    parser.add_argument("--per-category", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--drafter", default=None, help="drafter folder (default: shipped, else untrained)")
    parser.add_argument("--budget", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    target, tokenizer = load_target(dtype=DTYPES[args.dtype])
    specblock_hf.enable(target)
    drafter, label = load_drafter(args.drafter, target)
    if args.budget is not None:
        drafter.tree_config = specblock_hf.SpecBlockTreeConfig(blocks=2, beam=4, budget=args.budget)
    prompts = load_spec_bench(args.prompts, per_category=args.per_category)
    settings = {"do_sample": False, "max_new_tokens": args.max_new_tokens}
    records = []
    for index, prompt in enumerate(prompts):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt.text}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        if index == 0:  # warm-up
            target.generate(ids, max_new_tokens=4, assistant_model=drafter)
            target.generate(ids, max_new_tokens=4)
        start = time.perf_counter()
        plain = target.generate(ids, **settings)
        plain_time = time.perf_counter() - start
        start = time.perf_counter()
        speculative = target.generate(ids, **settings, assistant_model=drafter)
        speculative_time = time.perf_counter() - start
        stats = drafter.generation_stats
        divergence = first_divergence(target, ids.shape[1], plain, speculative)
        record = {
            "category": prompt.category,
            "prompt_tokens": ids.shape[1],
            "new_tokens": speculative.shape[1] - ids.shape[1],
            "identical": divergence is None and plain.shape == speculative.shape,
            "margin": None if divergence is None else divergence.margin,
            "divergence_index": None if divergence is None else divergence.index,
            "tau": stats.mean_acceptance_length,
            "rounds": stats.rounds,
            "plain_tokens_per_s": (plain.shape[1] - ids.shape[1]) / plain_time,
            "speculative_tokens_per_s": (speculative.shape[1] - ids.shape[1]) / speculative_time,
            "prefill_s": stats.prefill_time,
            "draft_s": stats.draft_time,
            "verify_s": stats.verify_time,
            "other_s": stats.other_time,
        }
        records.append(record)
        print(json.dumps(record))

    loop = sum(r["draft_s"] + r["verify_s"] + r["other_s"] for r in records)
    rounds = sum(r["rounds"] for r in records)
    margins = [abs(r["margin"]) for r in records if r["margin"] is not None]
    summary = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "target": "SmolLM2-135M-Instruct",
        "dtype": args.dtype,
        "drafter": label,
        "tree_config": str(
            getattr(drafter, "tree_config", None) or specblock_hf.generation.default_tree_config(drafter, target.device)
        ),
        "prompts": len(records),
        "max_new_tokens": args.max_new_tokens,
        "identical": sum(r["identical"] for r in records),
        "divergent": len(margins),
        "largest_margin": max(margins, default=None),
        "all_divergences_near_ties": all(m <= BF16_NEAR_TIE_MARGIN for m in margins),
        "tau": sum(r["tau"] * r["rounds"] for r in records) / max(rounds, 1),
        "plain_tokens_per_s": sum(r["new_tokens"] for r in records)
        / sum(r["new_tokens"] / r["plain_tokens_per_s"] for r in records),
        "speculative_tokens_per_s": sum(r["new_tokens"] for r in records)
        / sum(r["new_tokens"] / r["speculative_tokens_per_s"] for r in records),
        "ms_per_round": {
            k: 1e3 * sum(r[f"{k}_s"] for r in records) / max(rounds, 1) for k in ("draft", "verify", "other")
        },
        "share_of_round": {k: sum(r[f"{k}_s"] for r in records) / loop for k in ("draft", "verify", "other")},
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"summary": summary, "records": records}, indent=2))


if __name__ == "__main__":
    main()
