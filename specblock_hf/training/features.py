"""
Target features extracted once for training: per token the three tapped layer outputs (SPEC §2) and the final-norm
output, from which the target logits are recomputed during training instead of storing V-wide logits. Stored in
safetensors shards with a manifest, resumably, and read back as a torch `Dataset`.
"""

import hashlib
import json
import os
import time
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..drafter_base import default_target_layer_ids
from ..target import FeatureTap
from .data import pad_collate

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
STORAGE_DTYPE = torch.bfloat16
SHARD_KEYS = ("input_ids", "loss_mask", "features", "last_hidden")


@dataclass
class ExtractionStats:
    """What one `extract_features` call did; `tokens` counts real (unpadded) tokens of the shards it wrote."""

    tokens: int
    seconds: float
    shards_written: int
    shards_skipped: int

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def target_logits(target: PreTrainedModel, last_hidden: torch.Tensor) -> torch.Tensor:
    """
    The target's logits recomputed from its stored final-norm output: `lm_head`, then the final soft-capping of
    targets that have one (Gemma). Other logit post-scalings are not reproduced.

    Args:
        last_hidden (`torch.Tensor` of shape `(..., hidden_size)`)

    Returns:
        `torch.Tensor` of shape `(..., vocab_size)` in the target's dtype.
    """
    logits = target.get_output_embeddings()(last_hidden.to(target.dtype))
    softcap = getattr(target.config.get_text_config(), "final_logit_softcapping", None)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def _plan_shards(lengths: list[int], shard_tokens: int) -> list[dict]:
    """Consecutive sequences grouped into shards of at least `shard_tokens` tokens (the last may be smaller)."""
    shards, first, tokens = [], 0, 0
    for index, length in enumerate(lengths):
        tokens += length
        if tokens >= shard_tokens or index == len(lengths) - 1:
            shards.append({"file": f"shard-{len(shards):05d}.safetensors", "first": first,
                           "count": index + 1 - first, "tokens": tokens, "done": False})  # fmt: skip
            first, tokens = index + 1, 0
    return shards


def _fingerprint(dataset: Dataset) -> str:
    digest = hashlib.sha256()
    for index in range(len(dataset)):
        item = dataset[index]
        digest.update(item["input_ids"].to(torch.int32).numpy().tobytes())
        digest.update(item["loss_mask"].to(torch.bool).numpy().tobytes())
    return digest.hexdigest()


def _write_json(path: Path, value: dict) -> None:
    staging = path.with_name(path.name + ".partial")
    staging.write_text(json.dumps(value, indent=1))
    staging.replace(path)


def _load_or_create_manifest(out_dir: Path, settings: dict, lengths: list[int], shard_tokens: int) -> dict:
    path = out_dir / MANIFEST
    if path.is_file():
        manifest = json.loads(path.read_text())
        if {key: manifest.get(key) for key in settings} != settings or manifest["shard_tokens"] != shard_tokens:
            raise ValueError(
                f"{out_dir} holds features of another dataset, target or shard size ({path}); extract into a new "
                "folder or delete this one."
            )
        return manifest
    manifest = {**settings, "shard_tokens": shard_tokens, "shards": _plan_shards(lengths, shard_tokens)}
    _write_json(path, manifest)
    return manifest


@torch.inference_mode()
def _extract_batch(
    target: PreTrainedModel, tap: FeatureTap, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`features` `(B, n, 3H)` and `last_hidden` `(B, n, H)` of one right-padded batch, in the storage dtype."""
    # the decoder alone: its output is the final-norm hidden state, and the V-wide lm_head is never computed
    output = target.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    features = torch.cat(tap.outputs, dim=-1)  # (B, n, 3H), low | mid | high
    return features.to(STORAGE_DTYPE).cpu(), output.last_hidden_state.to(STORAGE_DTYPE).cpu()


def _extract_shard(
    target: PreTrainedModel, tap: FeatureTap, sequences: list[dict], batch_size: int, progress: tqdm
) -> dict[str, torch.Tensor]:
    """One shard's tensors: per-sequence values concatenated along tokens, with `offsets` `(num_sequences + 1,)`."""
    lengths = [item["input_ids"].shape[0] for item in sequences]
    outputs: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(sequences)
    # longest first, so that batches of similar lengths waste little on padding
    order = sorted(range(len(sequences)), key=lambda index: -lengths[index])
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = pad_collate([sequences[index] for index in rows])
        features, last_hidden = _extract_batch(
            target, tap, batch["input_ids"].to(target.device), batch["attention_mask"].to(target.device)
        )
        for row, index in enumerate(rows):
            outputs[index] = (features[row, : lengths[index]], last_hidden[row, : lengths[index]])
        progress.update(sum(lengths[index] for index in rows))
    return {
        "input_ids": torch.cat([item["input_ids"] for item in sequences]).to(torch.int32),
        "loss_mask": torch.cat([item["loss_mask"] for item in sequences]).to(torch.bool),
        "features": torch.cat([features for features, _ in outputs]),
        "last_hidden": torch.cat([last_hidden for _, last_hidden in outputs]),
        "offsets": torch.tensor([0, *lengths]).cumsum(0),
    }


def extract_features(
    target: PreTrainedModel,
    dataset: Dataset,
    out_dir: str | os.PathLike,
    layer_ids: Sequence[int] | None = None,
    batch_size: int = 8,
    shard_tokens: int = 1 << 16,
) -> ExtractionStats:
    """
    Run the target (no grad) over every sequence of `dataset` and store, per shard of consecutive sequences:
    `input_ids` (int32), `loss_mask` (bool), `features` (bf16, `(tokens, 3H)`: the outputs of decoder layers
    `layer_ids`, low | mid | high, before the final norm), `last_hidden` (bf16, `(tokens, H)`: the final-norm output;
    `target_logits(target, last_hidden)` gives the logits back) and `offsets` (int64, `(num_sequences + 1,)`).

    Resumable: `manifest.json` fixes the shard plan and marks finished shards, which a later call skips; it refuses
    an `out_dir` made from another dataset, target layers or shard size.

    Args:
        dataset: items with `input_ids` `(seq_len,)` and `loss_mask` `(seq_len,)`, e.g. a `TokenizedDataset`.
        layer_ids: the tapped decoder layers; default `[1, L//2 - 1, L - 4]` (SPEC §2).
        batch_size: sequences per target forward (right-padded; batches are formed within a shard).
        shard_tokens: tokens per shard (about `tokens * 8H` bytes each: 4H bf16 values per token).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text_config = target.config.get_text_config()
    layer_ids = list(default_target_layer_ids(text_config.num_hidden_layers) if layer_ids is None else layer_ids)
    lengths = [dataset[index]["input_ids"].shape[0] for index in range(len(dataset))]
    settings = {
        "format": FORMAT_VERSION,
        "layer_ids": layer_ids,
        "hidden_size": text_config.hidden_size,
        "num_sequences": len(lengths),
        "num_tokens": sum(lengths),
        "dataset_sha256": _fingerprint(dataset),
    }
    manifest = _load_or_create_manifest(out_dir, settings, lengths, shard_tokens)
    todo = [shard for shard in manifest["shards"] if not (shard["done"] and (out_dir / shard["file"]).is_file())]
    tap = FeatureTap(target, layer_ids)
    stats = ExtractionStats(tokens=0, seconds=0.0, shards_written=0, shards_skipped=len(manifest["shards"]) - len(todo))
    started = time.perf_counter()
    total_tokens = sum(shard["tokens"] for shard in todo)
    with tap.attached(), tqdm(total=total_tokens, unit="tok", unit_scale=True, desc="features") as progress:
        for shard in todo:
            sequences = [dataset[index] for index in range(shard["first"], shard["first"] + shard["count"])]
            tensors = _extract_shard(target, tap, sequences, batch_size, progress)
            staging = out_dir / (shard["file"] + ".partial")
            save_file(tensors, staging, metadata={"layer_ids": json.dumps(layer_ids)})
            staging.replace(out_dir / shard["file"])
            shard["done"] = True
            _write_json(out_dir / MANIFEST, manifest)
            stats.tokens += shard["tokens"]
            stats.shards_written += 1
    stats.seconds = time.perf_counter() - started
    return stats


class FeatureShards(Dataset):
    """
    The sequences `extract_features` stored in `out_dir` (finished shards only), in dataset order. Items:
    `input_ids` (long, `(seq_len,)`), `loss_mask` (bool, `(seq_len,)`), `features` (bf16, `(seq_len, 3H)`),
    `last_hidden` (bf16, `(seq_len, H)`); batch them with `data.pad_collate`.
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        manifest = json.loads((self.out_dir / MANIFEST).read_text())
        self.layer_ids: list[int] = manifest["layer_ids"]
        self.hidden_size: int = manifest["hidden_size"]
        self.shards = [shard for shard in manifest["shards"] if shard["done"]]
        self.starts = torch.tensor([0] + [shard["count"] for shard in self.shards]).cumsum(0).tolist()
        self.offsets = []
        for shard_index in range(len(self.shards)):
            with self._open(shard_index) as handle:
                self.offsets.append(handle.get_tensor("offsets"))
        self._handles: dict[int, object] = {}  # opened on first use, so that DataLoader workers open their own

    def _open(self, shard_index: int):
        return safe_open(self.out_dir / self.shards[shard_index]["file"], framework="pt")

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}

    def __len__(self) -> int:
        return self.starts[-1]

    @property
    def lengths(self) -> list[int]:
        """Tokens per sequence (for length-grouped batching)."""
        return torch.cat([offsets.diff() for offsets in self.offsets]).tolist() if self.offsets else []

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"Sequence {index} out of range for {len(self)} sequences.")
        shard_index = bisect_right(self.starts, index) - 1
        if shard_index not in self._handles:
            self._handles[shard_index] = self._open(shard_index)
        handle = self._handles[shard_index]
        offsets = self.offsets[shard_index]
        local = index - self.starts[shard_index]
        start, end = int(offsets[local]), int(offsets[local + 1])
        item = {key: handle.get_slice(key)[start:end] for key in SHARD_KEYS}
        item["input_ids"] = item["input_ids"].long()
        return item
