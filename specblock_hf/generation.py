"""The speculative decode loop: prompt -> prefill -> draft tree -> verify -> accept -> commit -> next round."""

from functools import partial

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .adaptation import resolve_adaptation
from .cache import commit_target_cache
from .candidates_eagle3 import Eagle3CandidateGenerator, Eagle3TreeConfig
from .candidates_specblock import SpecBlockCandidateGenerator, SpecBlockTreeConfig
from .drafter_base import DrafterPreTrainedModel
from .drafting import CandidateTreeGenerator
from .modeling_eagle3 import Eagle3Drafter
from .modeling_specblock import SpecBlockDrafter
from .stats import GenerationStats
from .target import FeatureTap, cache_argument, check_target, tree_attention_mask
from .tree import DraftTree
from .verification import accept

TreeConfig = SpecBlockTreeConfig | Eagle3TreeConfig


def default_tree_config(drafter: DrafterPreTrainedModel, device: torch.device) -> TreeConfig:
    """
    Tree shape when the caller sets none: the released GPU defaults on CUDA, and on CPU, where every verified node
    costs real time (a CPU verify forward grows with the node count; a GPU's is flat up to ~100 nodes), the shapes
    `budget.calibrate_budget` chose for the shipped SmolLM2 drafters on a 2-core CPU (1 block / depth 2, 4 nodes).
    A stronger drafter pays for a larger tree: calibrate it (`specblock bench --budget auto`).
    """
    on_gpu = device.type == "cuda"
    if isinstance(drafter, SpecBlockDrafter):
        return SpecBlockTreeConfig() if on_gpu else SpecBlockTreeConfig(blocks=1, beam=4, budget=4)
    return Eagle3TreeConfig() if on_gpu else Eagle3TreeConfig(top_k=4, depth=2, total_tokens=4)


def candidate_generator_for(drafter: DrafterPreTrainedModel, tree_config: TreeConfig) -> CandidateTreeGenerator:
    """The tree drafter that matches `drafter`'s architecture."""
    if isinstance(drafter, SpecBlockDrafter):
        if not isinstance(tree_config, SpecBlockTreeConfig):
            raise TypeError(f"A SpecBlock drafter takes a SpecBlockTreeConfig, got {type(tree_config).__name__}.")
        return SpecBlockCandidateGenerator(drafter, tree_config)
    if isinstance(drafter, Eagle3Drafter):
        if not isinstance(tree_config, Eagle3TreeConfig):
            raise TypeError(f"An EAGLE-3 drafter takes an Eagle3TreeConfig, got {type(tree_config).__name__}.")
        return Eagle3CandidateGenerator(drafter, tree_config)
    raise TypeError(f"Expected a SpecBlockDrafter or Eagle3Drafter, got {type(drafter).__name__}.")


def prepare_drafter(model: PreTrainedModel, drafter: DrafterPreTrainedModel) -> None:
    """Bind `drafter` to `model` (validating their shapes) unless it already reads this model's embedding."""
    if not isinstance(drafter, DrafterPreTrainedModel):
        raise TypeError(
            f"The drafter must be a SpecBlockDrafter or Eagle3Drafter (load it with `from_pretrained`), got "
            f"{type(drafter).__name__}."
        )
    if drafter.embed_tokens is not model.get_input_embeddings():
        drafter.bind_target(model)


@torch.no_grad()
def speculative_decode(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    drafter: DrafterPreTrainedModel,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    streamer: BaseStreamer | None = None,
    tree_config: TreeConfig | None = None,
    generator: torch.Generator | None = None,
    adaptation=None,
    **model_kwargs,
) -> GenerateDecoderOnlyOutput | torch.LongTensor:
    """
    Decode with tree speculation: each round the drafter proposes a tree, the target scores all of it in one forward
    under a 4D tree mask, and the longest path the target agrees with is kept (plus the target's own next token).

    Greedy output equals plain `generate()` token for token (up to numerical near-ties of a multi-token forward in
    low precision); sampled output has exactly the target's distribution after the user's logits processors.

    Args:
        input_ids (`torch.LongTensor` of shape `(1, prompt_len)`): the prompt, possibly left-padded.
        adaptation: online adaptation of the drafter for this call (see `adaptation.resolve_adaptation`): None uses
            `drafter.adaptation` if set, False none, "bandit" / "always" / an `AdaptationConfig` the drafter's own.
        model_kwargs: what `generate()` prepared: `attention_mask`, `position_ids`, the cache (`cache`, or
            `past_key_values` before transformers 5.25).
    """
    _check_request(model, input_ids, generation_config)
    prepare_drafter(model, drafter)
    device = input_ids.device
    tree_config = tree_config or getattr(drafter, "tree_config", None) or default_tree_config(drafter, device)
    candidates = candidate_generator_for(drafter, tree_config)
    adaptation = resolve_adaptation(drafter, adaptation)
    if adaptation is not None:
        max_new = generation_config.max_new_tokens or generation_config.max_length - input_ids.shape[1]
        adaptation.begin(prompt_length=input_ids.shape[1], max_new_tokens=max_new)
    # transformers >= 5.25 names the cache `cache` in model_kwargs; earlier releases `past_key_values`
    cache = _fresh_cache(model, model_kwargs.get("cache", model_kwargs.get("past_key_values")))
    cache_kwargs = cache_argument(model, cache)  # {"cache" or "past_key_values": cache}, once per call
    prefix_mask, position_ids = _prompt_layout(
        input_ids, model_kwargs.get("attention_mask"), model_kwargs.get("position_ids")
    )
    walk = partial(
        accept, logits_processor=logits_processor, stopping_criteria=stopping_criteria,
        do_sample=generation_config.do_sample, generator=generator,
    )  # fmt: skip
    stats, scores, raw_logits = GenerationStats(), [], []
    tap = FeatureTap(model, drafter.target_layer_ids)
    with tap.attached():
        with stats.timed("prefill", device):
            logits = model(
                input_ids=input_ids, attention_mask=model_kwargs.get("attention_mask"), position_ids=position_ids,
                **cache_kwargs, use_cache=True, logits_to_keep=1,
            ).logits[0]  # fmt: skip
            result = walk(DraftTree.root(input_ids[0, -1:]), logits, input_ids)
            cache.activate_past_recording()
        # prefill entries pair each prompt position with the token after it, the last with the first new token
        real = slice(None) if prefix_mask is None else prefix_mask
        features, next_tokens, positions = tap.features()[real], result.input_ids[0, 1:][real], position_ids[0][real]
        entry_indices = torch.arange(input_ids.shape[1], device=device)[real]  # sequence index of each entry's token
        while True:
            input_ids = result.input_ids
            scores += result.scores
            raw_logits += result.raw_logits
            _stream(streamer, result.emitted)
            if result.finished:
                break
            with stats.timed("draft", device):
                candidates.append(features, next_tokens, positions)
                if adaptation is not None:
                    adaptation.observe(candidates.appended_states, entry_indices)
                tree = candidates.propose()
            with stats.timed("verify", device):
                root_position = positions[-1] + 1
                mask = tree_attention_mask(model, cache, tree.ancestor_mask, tree.depths, prefix_mask)
                logits = model(
                    input_ids=tree.tokens[None], attention_mask=mask, position_ids=(root_position + tree.depths)[None],
                    **cache_kwargs, use_cache=True,
                ).logits[0]  # fmt: skip
            result = walk(tree, logits, input_ids)
            commit_target_cache(cache, result.path, tree.num_nodes)
            if prefix_mask is not None:
                prefix_mask = torch.cat([prefix_mask, prefix_mask.new_ones(result.path.shape[0])])
            stats.accepted.append(result.emitted.shape[0] - 1)
            if tree.keep_rank is not None:
                stats.accepted_keep_ranks.append(tree.keep_rank[result.path[1:]].tolist())
            features, next_tokens = tap.features()[result.path], result.emitted
            positions = root_position + torch.arange(result.path.shape[0], device=device)
            if adaptation is not None:
                entry_indices = input_ids.shape[1] - 1 + torch.arange(result.path.shape[0], device=device)
                with stats.timed("adapt", device):
                    adaptation.after_round(result.input_ids[0], stats.accepted[-1], result.emitted.shape[0])

    if adaptation is not None:
        with stats.timed("adapt", device):
            stats.adaptation_updates = adaptation.end(input_ids[0])
    if streamer is not None:
        streamer.end()
    stats.finish(new_tokens=len(scores))
    drafter.generation_stats = stats
    if not generation_config.return_dict_in_generate:
        return input_ids
    return GenerateDecoderOnlyOutput(
        sequences=input_ids,
        scores=tuple(scores) if generation_config.output_scores else None,
        logits=tuple(raw_logits) if generation_config.output_logits else None,
        past_key_values=cache if generation_config.use_cache else None,
    )


def _check_request(model: PreTrainedModel, input_ids: torch.LongTensor, generation_config: GenerationConfig) -> None:
    if generation_config.num_beams != 1:
        raise ValueError(f"Speculative decoding does not do beam search; got num_beams={generation_config.num_beams}.")
    if generation_config.num_return_sequences != 1:
        raise ValueError(
            "Speculative decoding returns one sequence per call; got "
            f"num_return_sequences={generation_config.num_return_sequences}. Call generate() once per sample."
        )
    check_target(model, input_ids.shape[0])


def _fresh_cache(model: PreTrainedModel, cache) -> DynamicCache:
    if cache is None:
        return DynamicCache(config=model.config)
    if not isinstance(cache, DynamicCache) or cache.get_seq_length() > 0:
        raise ValueError(
            "Speculative decoding needs a fresh DynamicCache; static caches and pre-filled caches are not supported."
        )
    return cache


def _prompt_layout(input_ids, attention_mask, position_ids):
    """
    The prompt's padding mask (None without padding) and position ids, as plain `generate()` computes them.

    Returns:
        `prefix_mask` (`torch.BoolTensor` of shape `(prompt_len,)` or None) and `position_ids` `(1, prompt_len)`.
    """
    prefix_mask = None if attention_mask is None or bool(attention_mask.all()) else attention_mask[0].bool()
    if position_ids is None:
        if prefix_mask is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        else:
            position_ids = (prefix_mask.long().cumsum(0) - 1).clamp(min=0)[None]
    return prefix_mask, position_ids


def _stream(streamer: BaseStreamer | None, tokens: torch.LongTensor) -> None:
    if streamer is not None:
        for token in tokens:
            streamer.put(token[None].cpu())
