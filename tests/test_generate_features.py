"""`generate()` features through both doors, each checked against plain `target.generate()`.

Logits processors, stop rules, streamers, dict outputs with scores and logits, sampling, statistics, clear errors for
what tree decoding does not support, and `enable` leaving every other assistant alone. Where a feature must act in
the middle of an accepted path, the oracle double grafts the expected continuation into every tree (random drafters
are accepted about never).
"""

import threading

import pytest
import torch
from char_tokenizer import make_char_tokenizer
from conftest import VOCAB, make_eagle3, make_specblock, make_target
from oracle import OracleCandidateGenerator
from transformers import (
    GenerationMixin,
    LlamaConfig,
    LlamaForCausalLM,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
    TextIteratorStreamer,
    TextStreamer,
)
from transformers.generation.streamers import BaseStreamer

import specblock_hf
from specblock_hf import SpecBlockConfig, SpecBlockDrafter, SpecBlockGenerationMixin, generation

PROMPT_LEN = 12
PROMPT = torch.randint(3, VOCAB, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(0))
NEW_TOKENS = 24
GREEDY = {"do_sample": False, "max_new_tokens": NEW_TOKENS, "eos_token_id": None}
DOORS = ("assistant_model", "custom_generate")
KINDS = ("specblock", "eagle3")


@pytest.fixture(scope="module")
def target():
    return specblock_hf.enable(make_target("llama"))


@pytest.fixture(scope="module")
def drafters(target):
    return {"specblock": make_specblock(target), "eagle3": make_eagle3(target)}


@pytest.fixture(scope="module")
def free_run(target) -> list[int]:
    """Plain greedy new tokens with no stop rule: EOS ids, banned tokens and stop strings are taken from this path."""
    return target.generate(PROMPT, **GREEDY)[0, PROMPT_LEN:].tolist()


@pytest.fixture(scope="module")
def tokenizer():
    return make_char_tokenizer(VOCAB)


@pytest.fixture
def oracle(monkeypatch):
    """
    `oracle(expected, agreement)` grafts `expected`'s continuation into every tree from then on, each grafted token
    right with probability `agreement`; when it is 1 every round accepts 8 drafts, so stops land at known places.
    """
    real_for = generation.candidate_generator_for

    def graft(expected: torch.LongTensor, agreement: float = 0.9) -> None:
        rng = torch.Generator().manual_seed(0)
        monkeypatch.setattr(
            generation, "candidate_generator_for",
            lambda drafter, tree_config: OracleCandidateGenerator(
                real_for(drafter, tree_config), expected[0], lambda sequence: expected[0, sequence.numel() :], rng,
                depth=8, agreement=agreement,
            ),
        )  # fmt: skip

    return graft


def speculate(model, drafter, door: str, inputs=PROMPT, streamer=None, **settings):
    """`model.generate` through one door: `enable` + `assistant_model=`, or `custom_generate=specblock_hf.generate`."""
    if door == "assistant_model":
        return model.generate(inputs, **settings, assistant_model=drafter, streamer=streamer)
    return model.generate(
        inputs, **settings, custom_generate=specblock_hf.generate, drafter=drafter, text_streamer=streamer
    )


class RecordingStreamer(BaseStreamer):
    """Records every `put` (a copy of the tensor) and `end` in order."""

    def __init__(self):
        self.events: list[tuple[str, torch.Tensor | None]] = []

    def put(self, value):
        self.events.append(("put", value.clone()))

    def end(self):
        self.events.append(("end", None))


class StopOnBigram(StoppingCriteria):
    """Stops once the last two tokens are `bigram`: a rule over context, unlike EOS."""

    def __init__(self, bigram: list[int]):
        self.bigram = torch.tensor(bigram)

    def __call__(self, input_ids, scores, **kwargs):
        if input_ids.shape[1] < 2:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)
        return (input_ids[:, -2:] == self.bigram).all(dim=-1)


def _bigram_prompt(free: list[int]) -> torch.LongTensor:
    """The prompt led by the bigram (its last token, the first free token): a 2-gram ban bites at the first step."""
    return torch.cat([PROMPT[:, -1:], torch.tensor([free[:1]]), PROMPT], dim=1)


PROCESSORS = {
    "repetition_penalty": lambda free: {"repetition_penalty": 1.3},
    "no_repeat_ngram_size": lambda free: {"no_repeat_ngram_size": 2, "inputs": _bigram_prompt(free)},
    "min_new_tokens": lambda free: {"min_new_tokens": 10, "eos_token_id": free[2]},
    "suppress_tokens": lambda free: {"suppress_tokens": [free[1], free[4]]},
    "bad_words_ids": lambda free: {"bad_words_ids": [[free[3]], [free[6], free[7]]]},
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("processor", list(PROCESSORS))
def test_logits_processors_give_identical_greedy_output(target, drafters, free_run, oracle, processor, kind):
    settings = {**GREEDY, **PROCESSORS[processor](free_run)}
    inputs = settings.pop("inputs", PROMPT)
    expected = target.generate(inputs, **settings)
    without = target.generate(inputs, **{key: value for key, value in settings.items() if key != processor})
    assert not torch.equal(expected, without), f"{processor} does not change this output, so it tests nothing"
    oracle(expected)
    for door in DOORS:
        actual = speculate(target, drafters[kind], door, inputs=inputs, **settings)
        assert torch.equal(actual, expected), f"{door}\nexpected {expected}\nactual   {actual}"
    assert max(drafters[kind].generation_stats.accepted) >= 2  # the processor acted inside accepted paths


STOPS = {
    "max_length": lambda free, tokenizer: {"max_new_tokens": None, "max_length": PROMPT_LEN + 17},
    "eos_list": lambda free, tokenizer: {"eos_token_id": [free[13], free[9]]},
    "stopping_criteria": lambda free, tokenizer: {"stopping_criteria": StoppingCriteriaList([StopOnBigram(free[7:9])])},
    "stop_strings": lambda free, tokenizer: {"stop_strings": [tokenizer.decode(free[10:12])], "tokenizer": tokenizer},
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stop", list(STOPS))
def test_stop_rules_give_identical_output(target, drafters, free_run, tokenizer, oracle, stop, kind):
    settings = {**GREEDY, **STOPS[stop](free_run, tokenizer)}
    expected = target.generate(PROMPT, **settings)
    assert expected.shape[1] < PROMPT_LEN + NEW_TOKENS, f"{stop} does not stop early, so it tests nothing"
    oracle(expected, agreement=1.0)  # rounds emit new tokens 1-9, 10-18, ...: these stops fall inside accepted paths
    for door in DOORS:
        door_settings = dict(settings)
        if door == "custom_generate" and stop == "stop_strings":
            # generate() drops `tokenizer` before a callable custom_generate runs: pass the criterion itself
            strings, tokenizer_ = door_settings.pop("stop_strings"), door_settings.pop("tokenizer")
            door_settings["stopping_criteria"] = StoppingCriteriaList([StopStringCriteria(tokenizer_, strings)])
        actual = speculate(target, drafters[kind], door, **door_settings)
        assert torch.equal(actual, expected), f"{door}\nexpected {expected}\nactual   {actual}"
        assert drafters[kind].generation_stats.accepted[-1] >= 1, f"{door}: the stop fired outside an accepted path"


def test_stop_strings_through_custom_generate_need_the_criterion(target, drafters, free_run, tokenizer):
    """Documents a transformers limit: a callable custom_generate never sees `tokenizer`, so `stop_strings` raise."""
    stop = tokenizer.decode(free_run[10:12])
    with pytest.raises(ValueError, match="could not locate a tokenizer"):
        speculate(target, drafters["specblock"], "custom_generate", **GREEDY, stop_strings=[stop], tokenizer=tokenizer)


@pytest.mark.parametrize("kind", KINDS)
def test_streamers_receive_exactly_the_output(target, drafters, tokenizer, oracle, capsys, kind):
    settings = {**GREEDY, "eos_token_id": 2}
    plain_record = RecordingStreamer()
    expected = target.generate(PROMPT, **settings, streamer=plain_record)
    target.generate(PROMPT, **settings, streamer=TextStreamer(tokenizer))
    plain_text = capsys.readouterr().out
    new_text = tokenizer.decode(expected[0, PROMPT_LEN:])
    oracle(expected)
    for door in DOORS:
        record = RecordingStreamer()
        actual = speculate(target, drafters[kind], door, streamer=record, **settings)
        assert torch.equal(actual, expected)
        calls = [call for call, _ in record.events]
        assert calls == ["put"] * calls.count("put") + ["end"], f"{door}: end() must come once, last: {calls}"
        prompt_put, token_puts = record.events[0][1], [value for _, value in record.events[1:-1]]
        assert torch.equal(prompt_put, PROMPT), f"{door}: the prompt must be put first, once"
        assert all(value.shape == (1,) for value in token_puts), f"{door}: one token per put"
        assert torch.equal(torch.cat(token_puts), actual[0, PROMPT_LEN:]), door
        assert len(record.events) == len(plain_record.events), door

        speculate(target, drafters[kind], door, streamer=TextStreamer(tokenizer), **settings)
        assert capsys.readouterr().out == plain_text, door

        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=60)
        thread = threading.Thread(
            target=speculate, args=(target, drafters[kind], door), kwargs={"streamer": streamer, **settings}
        )
        thread.start()
        text = "".join(streamer)
        thread.join()
        assert text == new_text, door


@pytest.mark.parametrize("kind", KINDS)
def test_dict_output_has_plain_scores_and_logits(target, drafters, oracle, kind):
    settings = {
        **GREEDY, "repetition_penalty": 1.3, "return_dict_in_generate": True, "output_scores": True, "output_logits": True,
    }  # fmt: skip
    expected = target.generate(PROMPT, **settings)
    oracle(expected.sequences)
    for door in DOORS:
        actual = speculate(target, drafters[kind], door, **settings)
        assert torch.equal(actual.sequences, expected.sequences), door
        assert len(actual.scores) == len(actual.logits) == NEW_TOKENS, door
        for step, (score, plain_score) in enumerate(zip(actual.scores, expected.scores, strict=True)):
            assert score.shape == plain_score.shape == (1, VOCAB)
            torch.testing.assert_close(score, plain_score, rtol=1e-4, atol=1e-5, msg=f"{door}: scores[{step}]")
        for step, (logits, plain_logits) in enumerate(zip(actual.logits, expected.logits, strict=True)):
            torch.testing.assert_close(logits, plain_logits, rtol=1e-4, atol=1e-5, msg=f"{door}: logits[{step}]")


SAMPLING = {
    "do_sample": True, "temperature": 0.8, "top_k": 20, "top_p": 0.9, "min_p": 0.05, "repetition_penalty": 1.2,
    "max_new_tokens": 16, "eos_token_id": None, "return_dict_in_generate": True, "output_scores": True,
}  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_is_valid_and_reproducible(target, drafters, kind):
    for door in DOORS:
        torch.manual_seed(7)
        first = speculate(target, drafters[kind], door, **SAMPLING)
        torch.manual_seed(7)
        again = speculate(target, drafters[kind], door, **SAMPLING)
        assert torch.equal(first.sequences, again.sequences), f"{door}: same seed, different samples"
        assert first.sequences.shape == (1, PROMPT_LEN + SAMPLING["max_new_tokens"]), door
        new = first.sequences[0, PROMPT_LEN:]
        assert bool(((new >= 0) & (new < VOCAB)).all()), door
        for token, scores in zip(new, first.scores, strict=True):
            # every token survived the filters: top_k keeps 20, and the sampled one is among the kept
            assert torch.isfinite(scores).sum() <= SAMPLING["top_k"]
            assert torch.isfinite(scores[0, token]), f"{door}: sampled a filtered token"

    # the custom_generate door also takes a torch.Generator, independent of the global seed
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        generator = torch.Generator().manual_seed(3)
        runs.append(speculate(target, drafters[kind], "custom_generate", generator=generator, **SAMPLING).sequences)
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("kind", KINDS)
def test_generation_stats(target, drafters, oracle, kind):
    expected = target.generate(PROMPT, **GREEDY)
    oracle(expected)
    for door in DOORS:
        actual = speculate(target, drafters[kind], door, **GREEDY)
        assert torch.equal(actual, expected)
        stats = drafters[kind].generation_stats
        assert stats.rounds == len(stats.accepted) >= 1
        assert max(stats.accepted) >= 2  # the oracle gave long paths
        assert stats.mean_acceptance_length == pytest.approx(sum(stats.accepted) / stats.rounds + 1)
        assert stats.mean_acceptance_length >= 1
        assert sum(stats.acceptance_histogram.values()) == stats.rounds
        assert stats.new_tokens == actual.shape[1] - PROMPT_LEN == NEW_TOKENS
        # the prefill emits one token; each round emits its accepted drafts plus the target's own token
        assert stats.new_tokens == 1 + stats.rounds + sum(stats.accepted)
        assert min(stats.prefill_time, stats.draft_time, stats.verify_time) > 0
        assert stats.total_time >= stats.prefill_time + stats.draft_time + stats.verify_time
        assert f"{stats.new_tokens} tokens in {stats.rounds} rounds" in stats.summary()


def _other_target(vocab_size: int = VOCAB, hidden_size: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    return specblock_hf.enable(LlamaForCausalLM(config).eval())


@pytest.mark.parametrize("door", DOORS)
def test_unsupported_inputs_raise_clear_errors(target, drafters, door):
    drafter = drafters["specblock"]
    with pytest.raises(ValueError, match="batch size 1"):
        speculate(target, drafter, door, inputs=PROMPT.repeat(2, 1), **GREEDY)
    with pytest.raises(ValueError, match="static caches"):
        speculate(target, drafter, door, **GREEDY, cache_implementation="static")

    flash_target = make_target("llama")
    flash_target.config._attn_implementation = "flash_attention_2"  # cannot be loaded on CPU; set after building
    specblock_hf.enable(flash_target)
    with pytest.raises(ValueError, match=r"attn_implementation='flash_attention_2'.*'sdpa'"):
        speculate(flash_target, make_specblock(flash_target), door, **GREEDY)


@pytest.mark.parametrize("door", DOORS)
def test_beam_search_is_refused(target, drafters, door):
    """Tree decoding has no beams: both doors must say so (not decode without the drafter, nor blame the batch)."""
    with pytest.raises(ValueError, match="num_beams"):
        speculate(target, drafters["specblock"], door, **GREEDY, num_beams=2)


@pytest.mark.parametrize("door", DOORS)
def test_several_return_sequences_are_refused(target, drafters, door):
    settings = {**SAMPLING, "num_return_sequences": 2}
    with pytest.raises(ValueError, match="num_return_sequences"):
        speculate(target, drafters["specblock"], door, **settings)


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("kind", KINDS)
def test_drafter_for_another_target_shape_is_refused(target, drafters, door, kind):
    drafter = drafters[kind]
    with pytest.raises(ValueError, match=r"Drafter/target mismatch.*hidden_size=64.*256 x 32"):
        speculate(_other_target(hidden_size=32), drafter, door, **GREEDY)
    with pytest.raises(ValueError, match=r"Drafter/target mismatch.*vocab_size=256.*300 x 64"):
        speculate(_other_target(vocab_size=300), drafter, door, **GREEDY)
    assert drafter.embed_tokens is target.get_input_embeddings(), "a refused target must not unbind the drafter"


def test_unbound_drafter_binds_itself_and_non_drafters_are_refused(target):
    expected = target.generate(PROMPT, **GREEDY)
    for door in DOORS:
        torch.manual_seed(0)
        config = SpecBlockConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, draft_vocab_size=128,
        )  # fmt: skip
        unbound = SpecBlockDrafter(config).eval()
        with pytest.raises(RuntimeError, match="bind_target"):
            unbound.target_embedding
        assert torch.equal(speculate(target, unbound, door, **GREEDY), expected), door
        assert unbound.embed_tokens is target.get_input_embeddings()

    with pytest.raises(ValueError, match="Pass the drafter"):
        target.generate(PROMPT, **GREEDY, custom_generate=specblock_hf.generate)
    for not_a_drafter in (_other_target(), "org/drafter"):
        with pytest.raises(TypeError, match="must be a SpecBlockDrafter or Eagle3Drafter"):
            speculate(target, not_a_drafter, "custom_generate", **GREEDY)


def test_enable_keeps_other_assistants_working(target):
    torch.manual_seed(5)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, pad_token_id=0,
    )  # fmt: skip
    assistant = LlamaForCausalLM(config).eval()
    assert isinstance(target, SpecBlockGenerationMixin)
    expected = target.generate(PROMPT, **GREEDY)
    assert torch.equal(target.generate(PROMPT, **GREEDY, assistant_model=assistant), expected)


def test_enable_and_disable_swap_only_the_instance_class():
    model, sibling = make_target("llama"), make_target("llama", seed=1)
    plain_class = type(model)
    expected = model.generate(PROMPT, **GREEDY)
    specblock_hf.enable(model)
    enabled_class = type(model)
    assert issubclass(enabled_class, plain_class) and issubclass(enabled_class, SpecBlockGenerationMixin)
    assert enabled_class.__name__ == plain_class.__name__
    assert specblock_hf.enable(model) is model and type(model) is enabled_class  # idempotent
    assert type(sibling) is plain_class  # other instances are untouched
    assert type(specblock_hf.enable(sibling)) is enabled_class  # one enabled class per model class
    assert torch.equal(model.generate(PROMPT, **GREEDY), expected)
    assert specblock_hf.disable(model) is model and type(model) is plain_class
    assert specblock_hf.disable(model) is model and type(model) is plain_class  # idempotent
    assert torch.equal(model.generate(PROMPT, **GREEDY), expected)


def test_import_leaves_fresh_models_alone():
    model = make_target("llama")
    assert type(model) is LlamaForCausalLM
    assert SpecBlockGenerationMixin not in type(model).__mro__
    assert type(model).generate is GenerationMixin.generate
    for cls in type(model).__mro__:
        for name, attribute in vars(cls).items():
            module = getattr(attribute, "__module__", None) or ""
            assert not module.startswith("specblock_hf"), f"{cls.__name__}.{name} comes from {module}"
