"""Benchmark runner on a tiny target: every method runs on every prompt, outputs are compared, the table renders."""

from pathlib import Path

import pytest
from conftest import make_llama_assistant, make_specblock, make_target
from test_training_data import make_chatml_tokenizer

import specblock_hf
from specblock_hf.bench.prompts import Prompt, load_prompts, load_spec_bench
from specblock_hf.bench.runner import (
    PLAIN,
    assisted_method,
    drafter_method,
    markdown_table,
    plain_method,
    prompt_lookup_method,
    run,
    summarize,
)

PROMPTS = [Prompt(1, "qa", "alpha beta gamma"), Prompt(2, "math", "delta delta omega"), Prompt(3, "qa", "beta beta")]


def _methods(target):
    drafter = make_specblock(target)
    return {
        PLAIN: plain_method,
        "prompt_lookup": prompt_lookup_method(3),
        "assisted": assisted_method(make_llama_assistant()),
        "specblock": drafter_method(drafter),
    }


def test_greedy_bench_compares_every_method_with_plain():
    target = specblock_hf.enable(make_target("llama"))
    records = run(target, make_chatml_tokenizer(), PROMPTS, _methods(target), max_new_tokens=12, progress=False)
    assert len(records) == 3 * 4
    assert all(r.identical for r in records), [r for r in records if not r.identical]  # fp32: exact
    summary = summarize(records)
    assert summary[PLAIN]["overall"]["speedup"] == 1.0
    assert summary["specblock"]["overall"]["tau"] >= 1.0 and summary["specblock"]["qa"]["prompts"] == 2
    assert summary["prompt_lookup"]["overall"]["tau"] is None  # HF methods report no rounds
    table = markdown_table(summary)
    assert table.count("\n") == 2 + 4 * 3 - 1 and "| specblock | overall |" in table


def test_sampling_bench_runs_without_comparisons():
    target = specblock_hf.enable(make_target("llama"))
    records = run(target, make_chatml_tokenizer(), PROMPTS[:2], _methods(target), 8, do_sample=True, progress=False)
    assert all(r.new_tokens == 8 and r.margin is None for r in records)


SPEC_BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "spec_bench_questions.jsonl"


@pytest.mark.skipif(not SPEC_BENCH.is_file(), reason="the Spec-Bench prompts live in ../shared/data (present in CI)")
def test_spec_bench_prompts_by_category():
    spec = load_spec_bench(SPEC_BENCH, per_category=2)
    assert len(spec) == 26 and len({p.category for p in spec}) == 13
    assert len(load_prompts(str(SPEC_BENCH), 8, ["qa", "rag"])) == 16
