"""`specblock train`: conversations -> tokens -> draft vocabulary -> cached target features -> trained drafter."""

import json
import time
from pathlib import Path

import torch

from ..drafter_base import default_target_layer_ids
from ..models import load_target
from .data import TokenizedDataset, load_conversations, pad_collate
from .features import FeatureShards, extract_features
from .trainer import TrainConfig, Trainer, new_drafter
from .vocab import select_draft_vocab

MODEL_CARD = """---
library_name: specblock-hf
tags: [speculative-decoding, {drafter}]
---
# {name}

{article} {kind} drafter for **{target}**, trained with specblock-hf (`specblock train`).

- Target features: outputs of target layers {layers} (low | mid | high).
- Draft vocabulary: Vd = {vd} most frequent assistant tokens of the training data; coverage {coverage:.1%}.
- Architecture: {architecture}.
- Training data: {sequences} conversations, {tokens} tokens ({assistant_tokens} assistant tokens) from `{data}`.
- Training: {steps} steps, batch {batch}, lr {lr}, {blocks} {block_word}; wall time {minutes:.0f} min on {device}.
- Held-out estimate (single greedy chain, block 1): slot accuracy {accuracy}, tau ~ {tau:.2f}.

Use it:

```python
import specblock_hf
drafter = specblock_hf.{cls}.from_pretrained("<this folder or repo>", target=target)
specblock_hf.enable(target)
target.generate(**inputs, assistant_model=drafter)
```
"""


def run_training(config: TrainConfig) -> Path:
    """Prepare data and features (cached, resumable), train, and write the drafter with its model card."""
    target, tokenizer = load_target(config.target, dtype=torch.bfloat16)
    conversations = load_conversations(config.data, limit=config.max_conversations)
    dataset = TokenizedDataset(tokenizer, conversations, config.max_length)
    used_ids, coverage = select_draft_vocab(
        dataset.assistant_tokens(), target.config.vocab_size, config.draft_vocab_size
    )
    layers = default_target_layer_ids(target.config.num_hidden_layers)
    extraction = extract_features(target, dataset, config.features_dir, layer_ids=layers)
    print(f"features: {extraction}; draft vocab coverage {coverage:.1%}")
    target = target.float()  # fp32 embedding and head for training; the features stay bf16 on disk
    drafter = new_drafter(config, target, used_ids)
    trainer = Trainer(config, target, drafter, FeatureShards(config.features_dir), pad_collate)
    started = time.time()
    final = trainer.train()
    minutes = (time.time() - started) / 60
    evaluation = trainer.final_evaluation
    assistant_tokens = sum(int(t.numel()) for t in dataset.assistant_tokens())
    kind = "SpecBlock" if config.drafter == "specblock" else "EAGLE-3"
    drafter_config = trainer.accelerator.unwrap_model(trainer.drafter).config
    card = MODEL_CARD.format(
        drafter=config.drafter, name=Path(config.output_dir).name, kind=kind, article="An" if kind[0] in "AEIOU" else "A",
        target=config.target or "HuggingFaceTB/SmolLM2-135M-Instruct", layers=layers, vd=config.draft_vocab_size,
        coverage=coverage, architecture=_architecture(drafter_config, config.drafter), sequences=len(dataset),
        tokens=sum(dataset.lengths), assistant_tokens=assistant_tokens, data=config.data, steps=trainer.step,
        batch=config.batch_size, lr=config.learning_rate, blocks=config.blocks,
        block_word="test-time-training blocks" if config.drafter == "specblock" else "training-time-test steps",
        minutes=minutes, device=trainer.accelerator.device, accuracy=evaluation["slot_accuracy"],
        tau=evaluation["tau_estimate"], cls="SpecBlockDrafter" if config.drafter == "specblock" else "Eagle3Drafter",
    )  # fmt: skip
    (final / "README.md").write_text(card)
    (final / "training_summary.json").write_text(
        json.dumps({"coverage": coverage, "minutes": minutes, "steps": trainer.step, **evaluation}, indent=2)
    )
    return final


def _architecture(config, kind: str) -> str:
    if kind == "specblock":
        return (
            f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, MLP {config.intermediate_size}, "
            f"K = {config.diffspec_draft_token_num} slots per block, {config.rank_classes} rank classes"
        )
    return f"1 layer, hidden {config.hidden_size}, MLP {config.intermediate_size}"
