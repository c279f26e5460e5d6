"""The Hub recipe `custom_generate/generate.py`, loaded from this repository's root as `generate()` loads it from the Hub.

transformers copies a local recipe into its modules cache, under a folder named by a hash of the file's bytes, and
imports that copy; every test here gets a private, empty modules cache, so no copy from another checkout or an older
run can be imported in place of the repository's file.
"""

import inspect
import shutil
import sys
from pathlib import Path

import pytest
import torch
from char_tokenizer import make_char_tokenizer
from conftest import VOCAB, make_eagle3, make_specblock, make_target
from transformers import dynamic_module_utils
from transformers.generation.streamers import BaseStreamer

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE = REPO_ROOT / "custom_generate" / "generate.py"
PROMPT_LEN = 10
PROMPT = torch.randint(3, VOCAB, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
GREEDY = {"do_sample": False, "max_new_tokens": 16, "eos_token_id": None}


@pytest.fixture(autouse=True)
def modules_cache(tmp_path, monkeypatch) -> Path:
    """A private transformers modules cache; the recipe modules imported from it are forgotten afterwards."""
    cache = tmp_path / "hf_modules"
    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(cache))
    monkeypatch.setattr(sys, "path", list(sys.path))  # transformers appends the cache folder to sys.path
    before = set(sys.modules)
    yield cache
    for name in set(sys.modules) - before:
        if name.startswith("transformers_modules"):
            del sys.modules[name]


@pytest.fixture(scope="module")
def target():
    return make_target("llama")  # not enabled: the recipe needs no `enable`


@pytest.fixture(scope="module")
def drafters(target):
    return {"specblock": make_specblock(target), "eagle3": make_eagle3(target)}


class RecordingStreamer(BaseStreamer):
    def __init__(self):
        self.events: list[tuple[str, list]] = []

    def put(self, value):
        self.events.append(("put", value.tolist()))

    def end(self):
        self.events.append(("end", []))


def recipe_generate(model, **kwargs):
    return model.generate(PROMPT, custom_generate=str(REPO_ROOT), trust_remote_code=True, **kwargs)


@pytest.mark.parametrize("kind", ["specblock", "eagle3"])
def test_recipe_equals_plain_greedy(target, drafters, kind):
    settings = {**GREEDY, "eos_token_id": 2}
    plain_record = RecordingStreamer()
    expected = target.generate(PROMPT, **settings, streamer=plain_record)
    drafter = drafters[kind]
    for drafter_argument in ("drafter", "assistant_model"):
        record = RecordingStreamer()
        actual = recipe_generate(target, **settings, streamer=record, **{drafter_argument: drafter})
        assert torch.equal(actual, expected), f"{drafter_argument}\nexpected {expected}\nactual   {actual}"
        assert record.events == plain_record.events, drafter_argument  # prompt once, each new token, then end()
        assert drafter.generation_stats.new_tokens == actual.shape[1] - PROMPT_LEN  # it really speculated


def test_recipe_passes_dict_outputs_and_stop_strings(target, drafters):
    tokenizer = make_char_tokenizer(VOCAB)
    free = target.generate(PROMPT, **GREEDY)[0, PROMPT_LEN:].tolist()
    settings = {**GREEDY, "stop_strings": [tokenizer.decode(free[6:8])], "tokenizer": tokenizer}
    settings.update(return_dict_in_generate=True, output_scores=True)
    expected = target.generate(PROMPT, **settings)
    assert expected.sequences.shape[1] == PROMPT_LEN + 8  # the stop string ends at new token 8
    actual = recipe_generate(target, **settings, drafter=drafters["specblock"])
    assert torch.equal(actual.sequences, expected.sequences)
    assert len(actual.scores) == len(expected.scores)


def test_recipe_is_this_repository_file(target, modules_cache):
    recipe = target.load_custom_generate(str(REPO_ROOT), trust_remote_code=True)
    source = Path(inspect.getsourcefile(recipe))
    assert source.is_relative_to(modules_cache), f"imported from {source}, not the private cache"
    assert source.read_bytes() == RECIPE.read_bytes()


def test_edited_recipe_is_not_served_stale(target, tmp_path):
    """transformers names the cached copy by the file's hash, so an edited recipe is imported afresh."""
    repo = tmp_path / "recipe_repo"
    shutil.copytree(RECIPE.parent, repo / "custom_generate")
    first = target.load_custom_generate(str(repo), trust_remote_code=True)
    with open(repo / "custom_generate" / "generate.py", "a") as file:
        file.write("\nRECIPE_EDIT = 2\n")
    edited = target.load_custom_generate(str(repo), trust_remote_code=True)
    assert edited.__globals__.get("RECIPE_EDIT") == 2
    assert "RECIPE_EDIT" not in first.__globals__


def test_recipe_errors(target, drafters):
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        target.generate(PROMPT, **GREEDY, custom_generate=str(REPO_ROOT), trust_remote_code=False)
    with pytest.raises(ValueError, match="needs a SpecBlock or EAGLE-3 drafter"):
        recipe_generate(target, **GREEDY)
    with pytest.raises(ValueError, match="Pass the drafter once"):
        recipe_generate(target, **GREEDY, drafter=drafters["specblock"], assistant_model=drafters["eagle3"])
