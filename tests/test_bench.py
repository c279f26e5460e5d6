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


def test_bench_cli_runs_each_budget_as_a_method_and_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr("specblock_hf.models.cache_dir", lambda: tmp_path / "cache")
    target_dir, drafter_dir = tmp_path / "target", tmp_path / "drafter"
    target = make_target("llama")
    target.save_pretrained(target_dir)
    make_chatml_tokenizer().save_pretrained(target_dir)
    make_specblock(target).save_pretrained(drafter_dir)
    prompts = tmp_path / "questions.jsonl"
    rows = [{"question_id": i, "category": c, "turns": [t]} for i, (c, t) in enumerate([("qa", "alpha beta"), ("math", "delta omega")])]  # fmt: skip
    prompts.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    out = tmp_path / "results" / "bench"
    main(["bench", "--target", str(target_dir), "--prompts", str(prompts), "--per-category", "1", "--dtype", "float32",
          "--max-new-tokens", "6", "--drafter", f"sb={drafter_dir}", "--budget", "auto,3", "--out", str(out)])  # fmt: skip
    report = json.loads(out.with_suffix(".json").read_text())
    assert set(report["summary"]) == {"plain", "sb[auto]", "sb[3]"}
    assert report["summary"]["sb[3]"]["overall"]["updates"] == 0
    assert "sb[auto]: SpecBlockTreeConfig(" in report["header"] and "calibrated" in report["header"]
    assert all(r["identical"] for r in report["records"])  # fp32: exact
    assert sum(report["summary"]["sb[3]"]["overall"]["histogram"].values()) > 0
    assert "Accepted length per round" in out.with_suffix(".md").read_text() and out.with_suffix(".png").is_file()


def test_bench_adaptation_modes_adapt_their_own_drafter_copies(tmp_path, monkeypatch):
    monkeypatch.setattr("specblock_hf.models.cache_dir", lambda: tmp_path / "cache")
    target_dir, drafter_dir = tmp_path / "target", tmp_path / "drafter"
    target = make_target("llama")
    target.save_pretrained(target_dir)
    make_chatml_tokenizer().save_pretrained(target_dir)
    make_specblock(target).save_pretrained(drafter_dir)
    prompts = tmp_path / "questions.jsonl"
    prompts.write_text("".join(json.dumps({"question_id": i, "category": "qa", "turns": [t]}) + "\n" for i, t in enumerate(["alpha beta", "beta gamma", "delta"])))  # fmt: skip
    out = tmp_path / "bench"
    main(["bench", "--target", str(target_dir), "--prompts", str(prompts), "--per-category", "3", "--dtype", "float32",
          "--max-new-tokens", "24", "--drafter", f"sb={drafter_dir}", "--budget", "8", "--adapt", "off,always",
          "--out", str(out)])  # fmt: skip
    report = json.loads(out.with_suffix(".json").read_text())
    summary = report["summary"]
    assert set(summary) == {"plain", "sb[adapt=off]", "sb[adapt=always]"}
    assert (
        summary["sb[adapt=off]"]["overall"]["updates"] == 0
        and summary["sb[adapt=off]"]["overall"]["adapt_ms_per_round"] == 0
    )
    assert summary["sb[adapt=always]"]["overall"]["adapt_ms_per_round"] > 0
    assert all(r["identical"] for r in report["records"])
