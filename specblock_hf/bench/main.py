"""`specblock bench`: build the methods from the command line, run them interleaved, write the report."""

import platform
from dataclasses import replace
from pathlib import Path

import torch

from ..auto import load_drafter
from ..budget import calibrate_budget
from ..generation import default_tree_config
from ..integration import enable
from ..models import load_target
from .prompts import load_prompts
from .report import write_report
from .runner import PLAIN, assisted_method, drafter_method, plain_method, prompt_lookup_method, run, summarize

SPEC_BENCH = Path(__file__).resolve().parents[3] / "shared" / "data" / "spec_bench_questions.jsonl"


def run_bench(args, dtype: torch.dtype) -> dict:
    target, tokenizer = load_target(args.target, dtype=dtype)
    enable(target)
    prompts = load_prompts(args.prompts or str(SPEC_BENCH), args.per_category, args.categories)
    methods = {PLAIN: plain_method}
    if args.prompt_lookup:
        methods["prompt_lookup"] = prompt_lookup_method()
    if args.assistant:
        assistant, _ = load_target(args.assistant, dtype=dtype)
        methods["hf_assisted"] = assisted_method(assistant)
    budget_specs = (args.budget or "").split(",") if args.budget else [None]
    adapt_modes = args.adapt.split(",") if args.adapt else ["off"]
    calibration = [_ids(tokenizer, p.text, target.device) for p in prompts[:: max(1, len(prompts) // 4)][:4]]
    notes, adapted = [], {}
    for item in args.drafter:
        name, path = item.split("=", 1)
        drafter = load_drafter(path, target=target)
        for spec in budget_specs:
            config, note = _tree_config(target, drafter, spec, calibration)
            for mode in adapt_modes:
                # each adaptation mode adapts its own copy of the drafter, from prompt to prompt
                copy = drafter if mode == "off" else load_drafter(path, target=target)
                tags = ([spec] if len(budget_specs) > 1 else []) + ([f"adapt={mode}"] if len(adapt_modes) > 1 else [])
                label = f"{name}[{','.join(tags)}]" if tags else name
                methods[label] = drafter_method(copy, config, adaptation=False if mode == "off" else mode)
                notes.append(f"{label}: {config}{note}")
                if mode != "off":
                    adapted[label] = copy
    records = run(target, tokenizer, prompts, methods, args.max_new_tokens, do_sample=args.sample)
    notes += [f"{label} adaptation after the stream: {d.adaptation.stats.summary()}" for label, d in adapted.items()]
    summary = summarize(records)
    header = (
        f"target {args.target or 'SmolLM2-135M-Instruct'} ({dtype}, {target.device}; {platform.machine()}, "
        f"{torch.get_num_threads()} threads); {len(prompts)} prompts from {args.prompts or 'Spec-Bench'} "
        f"({args.per_category} per category); {'sampling T=1' if args.sample else 'greedy'}; "
        f"max_new_tokens={args.max_new_tokens}; methods: {', '.join(methods)}; "
        + "; ".join(f"{n}: {p}" for n, p in (i.split("=", 1) for i in args.drafter))
        + "".join(f"\n- {note}" for note in notes)
    )
    for path in write_report(args.out, header, summary, records):
        print(f"wrote {path}")
    print(Path(args.out).with_suffix(".md").read_text())
    return summary


def _tree_config(target, drafter, spec: str | None, calibration: list[torch.LongTensor]):
    """The tree shape for budget `spec`: the device default (None), a fixed node budget, or "auto" (calibrated)."""
    config = default_tree_config(drafter, target.device)
    if spec is None:
        return config, ""
    if spec == "auto":
        config, _, choices = calibrate_budget(target, drafter, calibration, config)
        predicted = ", ".join(f"{c.shape} budget {c.budget}: {c.best_tokens_per_s:.1f} tok/s" for c in choices)
        return config, f" (calibrated; predicted best per shape: {predicted})"
    field = "budget" if hasattr(config, "budget") else "total_tokens"
    return replace(config, **{field: int(spec)}), ""


def _ids(tokenizer, text: str, device) -> torch.LongTensor:
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)[
        "input_ids"
    ].to(device)
