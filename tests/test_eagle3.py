"""EAGLE-3 baseline: config, strict loading of the published layouts, and tree drafting against the committed path."""

import json
import pickle
import re

import pytest
import torch
from conftest import recorded_calls
from huggingface_hub.errors import StrictDataclassClassValidationError
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from specblock_hf.candidates_eagle3 import Eagle3CandidateGenerator, Eagle3TreeConfig
from specblock_hf.configuration_eagle3 import Eagle3Config
from specblock_hf.modeling_eagle3 import Eagle3Drafter

VOCAB, HIDDEN, DRAFT_VOCAB = 256, 64, 64

# config.json as SpecForge and the official release publish it: a Llama config plus `draft_vocab_size`
PUBLISHED_CONFIG = {
    "architectures": ["LlamaForCausalLMEagle3"],
    "model_type": "llama",
    "attention_bias": False,
    "bos_token_id": 1,
    "eos_token_id": [2, 3],
    "head_dim": 16,
    "hidden_act": "silu",
    "hidden_size": HIDDEN,
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "max_position_embeddings": 4096,
    "max_window_layers": 36,
    "num_attention_heads": 4,
    "num_hidden_layers": 1,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": VOCAB,
    "draft_vocab_size": DRAFT_VOCAB,
}

PUBLISHED_SHAPES = {
    "fc.weight": (HIDDEN, 3 * HIDDEN),
    "midlayer.hidden_norm.weight": (HIDDEN,),
    "midlayer.input_layernorm.weight": (HIDDEN,),
    "midlayer.post_attention_layernorm.weight": (HIDDEN,),
    "midlayer.self_attn.q_proj.weight": (64, 2 * HIDDEN),
    "midlayer.self_attn.k_proj.weight": (32, 2 * HIDDEN),
    "midlayer.self_attn.v_proj.weight": (32, 2 * HIDDEN),
    "midlayer.self_attn.o_proj.weight": (HIDDEN, 64),
    "midlayer.mlp.gate_proj.weight": (128, HIDDEN),
    "midlayer.mlp.up_proj.weight": (128, HIDDEN),
    "midlayer.mlp.down_proj.weight": (HIDDEN, 128),
    "norm.weight": (HIDDEN,),
    "lm_head.weight": (DRAFT_VOCAB, HIDDEN),
    "d2t": (DRAFT_VOCAB,),
    "t2d": (VOCAB,),
}


def tiny_target(vocab_size: int = VOCAB, hidden_size: int = HIDDEN) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).float().eval()


@pytest.fixture(scope="module")
def target() -> LlamaForCausalLM:
    return tiny_target()


def tiny_drafter(seed: int = 0) -> Eagle3Drafter:
    """A random drafter with a random vocab map and sharpened logits, so that trees grow past depth 2."""
    torch.manual_seed(seed)
    drafter = Eagle3Drafter(Eagle3Config(**PUBLISHED_CONFIG)).float().eval()
    drafter.init_vocab_mapping(torch.randperm(VOCAB)[:DRAFT_VOCAB])
    with torch.no_grad():
        drafter.lm_head.weight.mul_(200)
    return drafter


def published_state(drafter: Eagle3Drafter, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The drafter's weights as a checkpoint stores them: floats in `dtype`, d2t int64, t2d bool."""
    return {k: v.to(dtype) if v.is_floating_point() else v.clone() for k, v in drafter.state_dict().items()}


def write_checkpoint(folder, state: dict[str, torch.Tensor], layout: str, dtype_name: str, **config) -> None:
    """Write `state` as SpecForge (`model.safetensors`) or the official release (`pytorch_model.bin`) publish it."""
    (folder / "config.json").write_text(json.dumps({**PUBLISHED_CONFIG, "torch_dtype": dtype_name, **config}))
    if layout == "specforge":
        save_file(state, str(folder / "model.safetensors"))
    else:
        torch.save(state, folder / "pytorch_model.bin")


def assert_same_weights(drafter: Eagle3Drafter, state: dict[str, torch.Tensor]) -> None:
    loaded = drafter.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        expected = value.float() if value.is_floating_point() else value
        assert loaded[key].dtype == expected.dtype, key
        assert torch.equal(loaded[key], expected), key


# --- configuration ---------------------------------------------------------------------------------------------------


def test_config_loads_published_keys():
    config = Eagle3Config(**PUBLISHED_CONFIG)
    assert config.target_hidden_size == HIDDEN
    assert config.draft_vocab_size == DRAFT_VOCAB
    assert config.target_layer_ids is None
    assert config.architectures == ["LlamaForCausalLMEagle3"]
    assert config.rope_parameters["rope_theta"] == 1000000.0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"draft_vocab_size": 0}, "got 0"),
        ({"draft_vocab_size": VOCAB + 1}, f"got {VOCAB + 1}"),
        ({"target_hidden_size": 0}, "got 0"),
        ({"target_layer_ids": [1, 2]}, r"got \[1, 2\]"),
        ({"target_layer_ids": [1, 2, -1]}, r"got \[1, 2, -1\]"),
    ],
)
def test_config_rejects_bad_values(bad, message):
    # `@strict` wraps the validator's ValueError; it stays the cause, quoting the bad value
    with pytest.raises(StrictDataclassClassValidationError) as error:
        Eagle3Config(**{**PUBLISHED_CONFIG, **bad})
    cause = error.value.__cause__
    assert isinstance(cause, ValueError)
    assert re.search(message, str(cause))


def test_tree_config_rejects_bad_values():
    with pytest.raises(ValueError, match="top_k=0"):
        Eagle3TreeConfig(top_k=0)
    with pytest.raises(ValueError, match="total_tokens=0"):
        Eagle3TreeConfig(total_tokens=0)
    with pytest.raises(ValueError, match=f"top_k={DRAFT_VOCAB + 1}"):
        Eagle3CandidateGenerator(tiny_drafter(), Eagle3TreeConfig(top_k=DRAFT_VOCAB + 1))


# --- checkpoints -----------------------------------------------------------------------------------------------------


def test_state_dict_is_the_published_layout():
    state = tiny_drafter().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == PUBLISHED_SHAPES
    assert state["d2t"].dtype == torch.int64
    assert state["t2d"].dtype == torch.bool


@pytest.mark.parametrize("tie_word_embeddings", [False, True])  # some SpecForge configs say true: nothing to tie
def test_loads_specforge_safetensors(tmp_path, target, tie_word_embeddings):
    state = published_state(tiny_drafter(), torch.bfloat16)
    write_checkpoint(tmp_path, state, "specforge", "bfloat16", tie_word_embeddings=tie_word_embeddings)
    drafter = Eagle3Drafter.from_pretrained(tmp_path, target=target)
    assert drafter.embed_tokens is target.get_input_embeddings()
    assert drafter.dtype == torch.float32  # moved to the target's dtype
    assert drafter.target_layer_ids == [1, 1, 0]
    assert_same_weights(drafter, state)


@pytest.mark.parametrize("with_embedding", [False, True])
def test_loads_official_pytorch_model_bin(tmp_path, target, with_embedding):
    state = published_state(tiny_drafter(), torch.float16)
    extra = {"embed_tokens.weight": torch.zeros(VOCAB, HIDDEN, dtype=torch.float16)} if with_embedding else {}
    write_checkpoint(tmp_path, {**state, **extra}, "official", "float16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "pytorch_model.bin"]
    drafter = Eagle3Drafter.from_pretrained(tmp_path, target=target)
    assert drafter.embed_tokens is target.get_input_embeddings()  # a stored copy of the embedding is dropped
    assert_same_weights(drafter, state)


PICKLE_CALLS = []


def _record_unpickling() -> torch.Tensor:
    PICKLE_CALLS.append(True)
    return torch.zeros(1)


class _CodeOnUnpickle:
    def __reduce__(self):
        return (_record_unpickling, ())


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path):
    # transformers reads `.bin` files through `modeling_utils.load_state_dict(..., weights_only=True)` (its
    # `from_pretrained` default), i.e. `torch.load(weights_only=True)`: a pickle that would run code is refused.
    state = {**published_state(tiny_drafter(), torch.float16), "fc.weight": _CodeOnUnpickle()}
    write_checkpoint(tmp_path, state, "official", "float16")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        Eagle3Drafter.from_pretrained(tmp_path)
    assert not PICKLE_CALLS


@pytest.mark.parametrize("layout", ["specforge", "official"])
def test_missing_key_raises_naming_it(tmp_path, layout):
    state = published_state(tiny_drafter(), torch.float16)
    del state["midlayer.hidden_norm.weight"]
    write_checkpoint(tmp_path, state, layout, "float16")
    with pytest.raises(ValueError, match=r"missing_keys: \['midlayer.hidden_norm.weight'\]"):
        Eagle3Drafter.from_pretrained(tmp_path)


@pytest.mark.parametrize("layout", ["specforge", "official"])
def test_extra_key_raises_naming_it(tmp_path, layout):
    state = {**published_state(tiny_drafter(), torch.float16), "midlayer.extra_proj.weight": torch.zeros(2, 2)}
    write_checkpoint(tmp_path, state, layout, "float16")
    with pytest.raises(ValueError, match=r"unexpected_keys: \['midlayer.extra_proj.weight'\]"):
        Eagle3Drafter.from_pretrained(tmp_path)


@pytest.mark.parametrize(("vocab_size", "hidden_size"), [(VOCAB, 32), (VOCAB + 44, HIDDEN)])
def test_wrong_target_raises(tmp_path, vocab_size, hidden_size):
    write_checkpoint(tmp_path, published_state(tiny_drafter(), torch.bfloat16), "specforge", "bfloat16")
    with pytest.raises(ValueError, match="Drafter/target mismatch"):
        Eagle3Drafter.from_pretrained(tmp_path, target=tiny_target(vocab_size, hidden_size))


def test_save_pretrained_round_trips_without_embedding(tmp_path, target):
    drafter = tiny_drafter().bind_target(target)
    drafter.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert set(saved) == set(PUBLISHED_SHAPES)  # no `embed_tokens.weight`
    reloaded = Eagle3Drafter.from_pretrained(tmp_path, target=target)
    assert_same_weights(reloaded, drafter.state_dict())


# --- tree drafting ---------------------------------------------------------------------------------------------------


def committed_generator(target, tree_config: Eagle3TreeConfig, num_entries: int = 6) -> Eagle3CandidateGenerator:
    """A generator whose cache holds `num_entries` random prefill entries at positions 0..num_entries-1."""
    generator = Eagle3CandidateGenerator(tiny_drafter().bind_target(target), tree_config)
    rng = torch.Generator().manual_seed(1)
    features = torch.randn(num_entries, 3 * HIDDEN, generator=rng)
    generator.append(features, torch.randint(VOCAB, (num_entries,), generator=rng), torch.arange(num_entries))
    return generator


def test_propose_returns_valid_tree(target):
    config = Eagle3TreeConfig(top_k=4, depth=4, total_tokens=20)
    generator = committed_generator(target, config)
    cache_length = generator.cache.length
    tree = generator.propose()

    child = torch.arange(1, tree.num_nodes)
    parents = tree.parents[1:]
    assert tree.num_nodes == config.total_tokens + 1  # 4 + 3 * 16 candidates, never duplicated
    assert tree.tokens[0] == generator.root_token[0] and tree.parents[0] == -1 and tree.depths[0] == 0
    assert ((parents >= 0) & (parents < child)).all()  # parents precede children
    assert torch.equal(tree.depths[1:], tree.depths[parents] + 1)
    assert 2 < int(tree.depths.max()) <= config.depth + 1
    assert (parents * VOCAB + tree.tokens[1:]).unique().numel() == tree.num_nodes - 1  # no duplicate siblings
    assert generator.drafter.t2d[tree.tokens[1:]].all()  # drafted ids are mapped to target ids
    level_one = generator.drafter.draft_to_target(generator.root_logits[0].topk(config.top_k).indices)
    assert torch.isin(tree.tokens[tree.depths == 1], level_one).all()

    assert generator.cache.length == cache_length  # uncommitted tree entries never enter the cache
    again = generator.propose()
    assert torch.equal(again.tokens, tree.tokens) and torch.equal(again.parents, tree.parents)


def test_tree_levels_match_committed_path(target):
    """A node drafted in the tree gets the logits it gets once its path is committed: same mask and positions."""
    generator = committed_generator(target, Eagle3TreeConfig(top_k=3, depth=4, total_tokens=30))
    drafter = generator.drafter
    with torch.no_grad():  # fc(features) = features[:, :H]: a committed entry can then carry any drafter state
        drafter.fc.weight.zero_()
        drafter.fc.weight[:, :HIDDEN] = torch.eye(HIDDEN)
    with recorded_calls(drafter) as calls:
        tree = generator.propose()
    assert len(calls) == 4  # one forward per expansion step

    # trace the best deepest node back to the root through the states each level was fed
    states = [generator.root_hidden] + [out.hidden_states[0] for _, out in calls]  # output states by depth
    node, path = 0, []
    for level in reversed(range(len(calls))):
        kwargs, out = calls[level]
        fed = kwargs["hidden"][0, node]
        path.append((fed, kwargs["token_ids"][0, node], out.logits[0, node]))
        node = int((states[level] == fed).all(dim=-1).nonzero()[0, 0])
    hidden, tokens, tree_logits = (torch.stack(column) for column in zip(*reversed(path), strict=True))

    # the states fed follow the tree's parent links: the traced tokens are a root-to-node path of the tree
    tree_node = 0
    for token in tokens:
        tree_node = int(((tree.parents == tree_node) & (tree.tokens == token)).nonzero()[0, 0])
    assert tree.depths[tree_node] == len(path)

    with recorded_calls(drafter) as calls:
        features = torch.cat([hidden, hidden.new_zeros(len(path), 2 * HIDDEN)], dim=1)
        generator.append(features, tokens, generator.root_position + torch.arange(len(path)))
    torch.testing.assert_close(calls[0][1].logits[0], tree_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(generator.root_logits[0], tree_logits[-1], rtol=1e-5, atol=1e-5)
