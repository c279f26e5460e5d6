"""The EAGLE-3 baseline drafter: one decoder layer, one drafted token per forward (SPEC §7)."""

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers.modeling_outputs import ModelOutput
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding

from .attention import DraftAttention, KeyValue
from .configuration_eagle3 import Eagle3Config
from .drafter_base import DrafterPreTrainedModel


@dataclass
class Eagle3Output(ModelOutput):
    """
    Args:
        hidden_states (`torch.FloatTensor` of shape `(batch_size, num_entries, hidden_size)`): each entry's state
            before the final norm; the next tree step takes it as its `hidden`.
        logits (`torch.FloatTensor` of shape `(batch_size, num_entries, draft_vocab_size)`)
        key_values: one element (the single layer): the rotated keys and values of this call's `num_entries` queries.
    """

    hidden_states: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    key_values: list[KeyValue] | None = None


class Eagle3DecoderLayer(nn.Module):
    """
    A Llama block whose attention reads `[input_layernorm(token embedding) ; hidden_norm(h)]` and whose residual
    stream is `h`.
    """

    def __init__(self, config: Eagle3Config):
        super().__init__()
        hidden, target_hidden = config.hidden_size, config.target_hidden_size
        self.hidden_norm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        self.input_layernorm = LlamaRMSNorm(target_hidden, eps=config.rms_norm_eps)
        self.self_attn = DraftAttention(config, input_size=target_hidden + hidden)
        self.post_attention_layernorm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        token_embeds: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.BoolTensor,
        past_key_value: KeyValue | None = None,
    ) -> tuple[torch.Tensor, KeyValue]:
        attn_input = torch.cat([self.input_layernorm(token_embeds), self.hidden_norm(hidden_states)], dim=-1)
        attn_out, key_value = self.self_attn(attn_input, position_embeddings, attention_mask, past_key_value)
        hidden_states = hidden_states + attn_out
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, key_value


class Eagle3Drafter(DrafterPreTrainedModel):
    """
    The EAGLE-3 drafter (SPEC §7). An entry pairs a state `h` with a token: `h = fc(target features of token t)` for
    a committed entry, or the drafter's own previous output state during tree drafting; the token is `t + 1`. The
    entry's output predicts the token after `t + 1`. One forward drafts one tree level, so a tree of `D` levels costs
    `D - 1` forwards after the one that appends the verified entries (which yields level 1).
    """

    config_class = Eagle3Config
    published_architecture = "LlamaForCausalLMEagle3"
    config: Eagle3Config
    _no_split_modules: ClassVar[list[str]] = ["Eagle3DecoderLayer"]

    def __init__(self, config: Eagle3Config):
        super().__init__(config)
        self.embed_tokens = None  # borrowed from the target by `bind_target`
        self.fc = nn.Linear(3 * config.target_hidden_size, config.hidden_size, bias=False)
        self.midlayer = Eagle3DecoderLayer(config)
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.draft_vocab_size, bias=False)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.zeros(config.vocab_size, dtype=torch.bool))
        self.post_init()

    def forward(
        self,
        hidden: torch.Tensor,
        token_ids: torch.LongTensor,
        position_ids: torch.LongTensor,
        attention_mask: torch.BoolTensor,
        past_key_values: list[KeyValue] | None = None,
        hidden_is_feature: bool = True,
    ) -> Eagle3Output:
        """
        Args:
            hidden (`torch.FloatTensor` of shape `(batch_size, num_entries, 3 * target_hidden_size)`): target features
                (`hidden_is_feature=True`), or `(batch_size, num_entries, hidden_size)` drafter output states.
            token_ids (`torch.LongTensor` of shape `(batch_size, num_entries)`): target-vocabulary token of each entry.
            position_ids (`torch.LongTensor` of shape `(batch_size, num_entries)`): RoPE position of each entry.
            attention_mask (`torch.BoolTensor` of shape `(batch_size, num_entries, past_len + num_entries)`): True
                where an entry may attend.
            past_key_values: one element (the single layer): rotated keys and values, each of shape
                `(batch_size, num_kv_heads, past_len, head_dim)`.
            hidden_is_feature (`bool`): whether `hidden` holds target features, to be projected by `fc`.
        """
        state = self.fc(hidden) if hidden_is_feature else hidden  # (B, N, H)
        position_embeddings = self.rotary_emb(state, position_ids)
        past = past_key_values[0] if past_key_values is not None else None
        state, key_value = self.midlayer(
            state, self.target_embedding(token_ids), position_embeddings, attention_mask, past
        )
        return Eagle3Output(hidden_states=state, logits=self.lm_head(self.norm(state)), key_values=[key_value])


__all__ = ["Eagle3Drafter", "Eagle3Output"]
