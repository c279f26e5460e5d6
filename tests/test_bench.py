"""Benchmark runner on a tiny target: every method runs on every prompt, outputs are compared, the table renders."""

import json
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
from specblock_hf.cli import main

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


@pytest.fixture
def bench_world(tmp_path, monkeypatch):
    """A tiny target with a tokenizer and a SpecBlock drafter saved to folders, and a prompts file writer."""
    monkeypatch.setattr("specblock_hf.models.cache_dir", lambda: tmp_path / "cache")
    target_dir, drafter_dir = tmp_path / "target", tmp_path / "drafter"
    target = make_target("llama")
    target.save_pretrained(target_dir)
    make_chatml_tokenizer().save_pretrained(target_dir)
    make_specblock(target).save_pretrained(drafter_dir)

    def prompts(rows: list[tuple[str, str]]) -> Path:
        path = tmp_path / "questions.jsonl"
        path.write_text("".join(json.dumps({"question_id": i, "category": c, "turns": [t]}) + "\n" for i, (c, t) in enumerate(rows)))  # fmt: skip
        return path

    common = ["bench", "--target", str(target_dir), "--dtype", "float32", "--drafter", f"sb={drafter_dir}"]
    return common, prompts, tmp_path


def test_bench_cli_runs_each_budget_as_a_method_and_writes_the_report(bench_world):
    common, prompts, tmp_path = bench_world
    out = tmp_path / "results" / "bench"
    main([*common, "--prompts", str(prompts([("qa", "alpha beta"), ("math", "delta omega")])), "--per-category", "1",
          "--max-new-tokens", "6", "--budget", "auto,3", "--out", str(out)])  # fmt: skip
    report = json.loads(out.with_suffix(".json").read_text())
    assert set(report["summary"]) == {"plain", "sb[auto]", "sb[3]"}
    assert report["summary"]["sb[3]"]["overall"]["updates"] == 0
    assert "sb[auto]: SpecBlockTreeConfig(" in report["header"] and "calibrated" in report["header"]
    assert all(r["identical"] for r in report["records"])  # fp32: exact
    assert sum(report["summary"]["sb[3]"]["overall"]["histogram"].values()) > 0
    assert "Accepted length per round" in out.with_suffix(".md").read_text() and out.with_suffix(".png").is_file()


def test_bench_adaptation_modes_adapt_their_own_drafter_copies(bench_world):
    common, prompts, tmp_path = bench_world
    out = tmp_path / "bench"
    rows = [("qa", "alpha beta"), ("qa", "beta gamma"), ("qa", "delta")]
    main([*common, "--prompts", str(prompts(rows)), "--per-category", "3", "--max-new-tokens", "24", "--budget", "8",
          "--adapt", "off,always", "--out", str(out)])  # fmt: skip
    report = json.loads(out.with_suffix(".json").read_text())
    summary = report["summary"]
    assert set(summary) == {"plain", "sb[adapt=off]", "sb[adapt=always]"}
    off = summary["sb[adapt=off]"]["overall"]
    assert off["updates"] == 0 and off["adapt_ms_per_round"] == 0
    assert summary["sb[adapt=always]"]["overall"]["adapt_ms_per_round"] > 0
    assert all(r["identical"] for r in report["records"])
