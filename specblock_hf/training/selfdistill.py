"""
Self-distillation data (SPEC §6): the target answers each conversation's first user turn itself, at a mix of
temperatures, so the drafter learns the target's own distribution. Written to jsonl, resumably.
"""

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data import Message

# (temperature, weight): the released recipe's mix, 4:1:1:1:3 over T = 0 / 0.3 / 0.5 / 0.7 / 1.0
TEMPERATURE_MIX = ((0.0, 4), (0.3, 1), (0.5, 1), (0.7, 1), (1.0, 3))
_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def first_user_prompt(messages: list[Message]) -> list[Message] | None:
    """The messages up to and including the first user turn (a leading system message stays), or None without one."""
    for index, message in enumerate(messages):
        if message["role"] == "user":
            return messages[: index + 1]
    return None


def prompt_id(prompt: list[Message]) -> str:
    """A stable id for a prompt without one: a hash of its messages."""
    return hashlib.sha1(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:16]


def _completed_ids(out_path: Path) -> set[str]:
    """Ids already answered in `out_path`; a partly written last line (an interrupted run) is cut off the file."""
    if not out_path.is_file():
        return set()
    data = out_path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        with open(out_path, "r+b") as file:
            file.truncate(len(complete))
    return {json.loads(line)["id"] for line in complete.decode("utf-8").splitlines() if line.strip()}


def _left_padded(
    tokenizer: PreTrainedTokenizerBase, prompts: list[list[Message]], pad_token_id: int
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Chat-templated prompts left-padded to `(batch_size, max_len)` ids and attention mask."""
    texts = [tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) for prompt in prompts]
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    max_len = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), max_len), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), max_len), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, max_len - len(ids) :] = torch.tensor(ids)
        attention_mask[row, max_len - len(ids) :] = 1
    return input_ids, attention_mask


def _answer_text(tokenizer: PreTrainedTokenizerBase, new_tokens: torch.Tensor, eos_token_ids: list[int]) -> str:
    """The decoded answer up to (not including) the first end-of-sequence token."""
    stops = torch.isin(new_tokens, torch.tensor(eos_token_ids, device=new_tokens.device)).nonzero()
    end = int(stops[0]) if stops.numel() else new_tokens.shape[0]
    return tokenizer.decode(new_tokens[:end], skip_special_tokens=True)


def regenerate_answers(
    target: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[list[Message]],
    out_path: str | os.PathLike,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    temperature_mix: Sequence[tuple[float, float]] = TEMPERATURE_MIX,
    top_p: float = 0.95,
    seed: int = 0,
    *,
    ids: Sequence[str] | None = None,
    source: str = "",
) -> int:
    """
    Answer each conversation's first user turn with the target (plain `generate()`, left-padded batches) and append
    jsonl rows `{id, source, generator, temperature, messages}` to `out_path`, flushed per batch.

    Resumable: ids already in `out_path` are skipped. Batches are fixed slices of `conversations` and each batch's
    temperature (drawn from `temperature_mix` by weight; T = 0 is greedy, else top-p sampling) and sampling seed
    depend only on `seed` and the batch index, so an interrupted run finishes as an uninterrupted one would.
    Answers cut at `max_new_tokens` are kept as they are.

    Args:
        conversations: OpenAI-style message lists; those without a user turn are skipped.
        temperature_mix: `(temperature, weight)` pairs.
        ids: one id per conversation (e.g. `Conversation.id`); by default a hash of the prompt.
        source: written to each row's `source` field.

    Returns:
        the number of rows written by this call.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    prompts = [first_user_prompt(messages) for messages in conversations]
    ids = [prompt_id(prompt) if prompt else "" for prompt in prompts] if ids is None else list(ids)
    if len(ids) != len(prompts):
        raise ValueError(f"Got {len(ids)} ids for {len(prompts)} conversations.")

    temperatures = torch.tensor([temperature for temperature, _ in temperature_mix], dtype=torch.float64)
    weights = torch.tensor([weight for _, weight in temperature_mix], dtype=torch.float64)
    num_batches = -(-len(prompts) // batch_size)
    draws = torch.multinomial(weights, num_batches, replacement=True, generator=torch.Generator().manual_seed(seed))
    batch_temperatures = temperatures[draws].tolist()

    generation_config = target.generation_config
    eos_token_ids = generation_config.eos_token_id
    eos_token_ids = [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids)
    pad_token_id = generation_config.pad_token_id
    pad_token_id = tokenizer.pad_token_id if pad_token_id is None else pad_token_id
    pad_token_id = eos_token_ids[0] if pad_token_id is None else pad_token_id
    model_name = Path(target.name_or_path).name or type(target).__name__
    generator_name = f"{model_name} {_DTYPE_NAMES.get(target.dtype, str(target.dtype))}"

    done = _completed_ids(out_path)
    pending = {ids[index] for index, prompt in enumerate(prompts) if prompt is not None} - done
    written = 0
    with open(out_path, "a", encoding="utf-8") as out_file, tqdm(total=len(pending), desc="answers") as progress:
        for batch_index in range(num_batches):
            batch = []
            for index in range(batch_index * batch_size, min((batch_index + 1) * batch_size, len(prompts))):
                if prompts[index] is not None and ids[index] not in done:
                    done.add(ids[index])  # a repeated id is answered once
                    batch.append(index)
            if not batch:
                continue
            temperature = batch_temperatures[batch_index]
            input_ids, attention_mask = _left_padded(tokenizer, [prompts[index] for index in batch], pad_token_id)
            # top_k=0: only temperature and top-p shape the distribution (generate() would add top-k 50 by default)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
            with torch.random.fork_rng(devices=[target.device] if target.device.type == "cuda" else []):
                torch.manual_seed(seed + batch_index)
                output = target.generate(
                    input_ids=input_ids.to(target.device),
                    attention_mask=attention_mask.to(target.device),
                    max_new_tokens=max_new_tokens,
                    pad_token_id=pad_token_id,
                    **(sampling if temperature > 0 else {"do_sample": False}),
                )
            for row, index in enumerate(batch):
                answer = _answer_text(tokenizer, output[row, input_ids.shape[1] :], eos_token_ids)
                record = {
                    "id": ids[index],
                    "source": source,
                    "generator": generator_name,
                    "temperature": temperature,
                    "messages": [*prompts[index], {"role": "assistant", "content": answer}],
                }
                out_file.write(json.dumps(record, ensure_ascii=False) + "\n")
            out_file.flush()
            written += len(batch)
            progress.update(len(batch))
    return written
