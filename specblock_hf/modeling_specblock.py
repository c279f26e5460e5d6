"""The SpecBlock drafter: one forward drafts a block of K dependent positions (SPEC §3)."""

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers.modeling_outputs import ModelOutput
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding

from .attention import DraftAttention, KeyValue
from .configuration_specblock import SpecBlockConfig
from .drafter_base import DrafterPreTrainedModel

RANK_TOP_K = 20  # rank features read the top-20 draft logits, in training and inference alike (SPEC §3 Decision)
NUM_RANK_FEATURES = 15


@dataclass
class SpecBlockOutput(ModelOutput):
    """
    Args:
        hidden_states (`torch.FloatTensor` of shape `(batch_size, num_rows, K, hidden_size)`): each slot's state before
            the final norm; later blocks take it as their condition.
        logits (`torch.FloatTensor` of shape `(batch_size, num_rows, K, draft_vocab_size)`)
        rank_logits (`torch.FloatTensor` of shape `(batch_size, num_rows, K, rank_classes)`)
        key_values: per layer, the rotated keys and values of this block's `num_rows * K` queries.
    """

    hidden_states: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    rank_logits: torch.FloatTensor | None = None
    key_values: list[KeyValue] | None = None


def rank_features(logits: torch.Tensor) -> torch.Tensor:
    """
    The 15 rank-head features of each slot, from its top-20 draft logits `l1 >= l2 >= ...` (SPEC §3): the 10 top
    log-probs normalised by the log-sum-exp of the top-20, `l1-l2`, `l1-l3`, `l1-l5`, the top probability, and the
    entropy of the renormalised top-20.

    Args:
        logits (`torch.FloatTensor` of shape `(..., draft_vocab_size)`)

    Returns:
        `torch.FloatTensor` of shape `(..., 15)`, float32, without gradient.
    """
    top = logits.detach().float().topk(RANK_TOP_K, dim=-1).values  # (..., 20), descending
    log_probs = top - top.logsumexp(dim=-1, keepdim=True)
    probs = log_probs.exp()
    entropy = -(probs * log_probs).sum(dim=-1, keepdim=True)
    gaps = top[..., :1] - top[..., [1, 2, 4]]
    return torch.cat([log_probs[..., :10], gaps, probs[..., :1], entropy], dim=-1)


class SpecBlockInputLayer(nn.Module):
    """Fuses (condition, token, slot query) into the K slot inputs of a block."""

    def __init__(self, config: SpecBlockConfig):
        super().__init__()
        hidden, target_hidden = config.hidden_size, config.target_hidden_size
        self.condition_proj = nn.Linear(3 * target_hidden, hidden, bias=False)
        self.condition_norm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        self.token_norm = LlamaRMSNorm(target_hidden, eps=config.rms_norm_eps)
        self.query_norm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        self.position_queries = nn.Embedding(config.diffspec_draft_token_num, hidden)
        self.fuse = nn.Linear(2 * hidden + target_hidden, hidden, bias=False)

    def forward(self, condition: torch.Tensor, token_embeds: torch.Tensor, condition_is_feature: bool) -> torch.Tensor:
        """
        Args:
            condition (`torch.FloatTensor` of shape `(batch_size, num_rows, 3 * target_hidden_size)` for target
                features, or `(batch_size, num_rows, hidden_size)` for a drafter slot state)
            token_embeds (`torch.FloatTensor` of shape `(batch_size, num_rows, target_hidden_size)`)

        Returns:
            `torch.FloatTensor` of shape `(batch_size, num_rows, K, hidden_size)`.
        """
        cond = self.condition_proj(condition) if condition_is_feature else condition
        cond = self.condition_norm(cond)
        tok = self.token_norm(token_embeds)
        queries = self.query_norm(self.position_queries.weight)  # (K, H)
        B, N, H = cond.shape
        K = queries.shape[0]
        fused = torch.cat(
            [
                cond[:, :, None].expand(B, N, K, H),
                tok[:, :, None].expand(B, N, K, tok.shape[-1]),
                queries.expand(B, N, K, H),
            ],
            dim=-1,
        )  # (B, N, K, 2H + Ht): column blocks [condition, token, query]
        return self.fuse(fused)


class SpecBlockDecoderLayer(nn.Module):
    """A pre-norm Llama block whose attention runs over an explicit past and mask."""

    def __init__(self, config: SpecBlockConfig):
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = DraftAttention(config, config.hidden_size)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, hidden_states, position_embeddings, attention_mask, past_key_value=None):
        attn_out, key_value = self.self_attn(
            self.input_layernorm(hidden_states), position_embeddings, attention_mask, past_key_value
        )
        hidden_states = hidden_states + attn_out
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, key_value


class SpecBlockDrafter(DrafterPreTrainedModel):
    """
    The SpecBlock drafter (SPEC §3). One forward takes `num_rows` (condition, token) pairs and returns K dependent
    slots for each: slot k of a row anchored at position P predicts the token at P+2+k given the row's token at P+1.
    Slots of a row are tied by causal attention and by the layer-wise shift `x_k <- W_l [x_k ; x_{k-1}]` before every
    layer after the first.
    """

    config_class = SpecBlockConfig
    published_architecture = "LlamaForCausalLMSpecBlock"
    config: SpecBlockConfig
    _no_split_modules: ClassVar[list[str]] = ["SpecBlockDecoderLayer"]

    def __init__(self, config: SpecBlockConfig):
        super().__init__(config)
        hidden = config.hidden_size
        self.embed_tokens = None  # borrowed from the target by `bind_target`
        self.input_layer = SpecBlockInputLayer(config)
        self.layers = nn.ModuleList([SpecBlockDecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.shift_proj = nn.ModuleList(
            [nn.Linear(2 * hidden, hidden, bias=False) for _ in range(config.num_hidden_layers - 1)]
        )
        self.norm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(hidden, config.draft_vocab_size, bias=False)
        self.rank_head = nn.Sequential(
            nn.Linear(hidden + NUM_RANK_FEATURES, 256, bias=False),
            nn.SiLU(),
            nn.Linear(256, config.rank_classes, bias=False),
        )
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.zeros(config.vocab_size, dtype=torch.bool))
        self.post_init()

    @property
    def block_size(self) -> int:
        """K, the number of slots one block drafts."""
        return self.config.diffspec_draft_token_num

    def forward(
        self,
        condition: torch.Tensor,
        token_ids: torch.LongTensor,
        position_ids: torch.LongTensor,
        attention_mask: torch.BoolTensor,
        past_key_values: list[KeyValue] | None = None,
        condition_is_feature: bool = True,
    ) -> SpecBlockOutput:
        """
        Args:
            condition (`torch.FloatTensor` of shape `(batch_size, num_rows, 3 * target_hidden_size)`): target features
                (`condition_is_feature=True`), or `(batch_size, num_rows, hidden_size)` drafter slot states.
            token_ids (`torch.LongTensor` of shape `(batch_size, num_rows)`): target-vocabulary token of each row.
            position_ids (`torch.LongTensor` of shape `(batch_size, num_rows, K)`): RoPE position of each slot.
            attention_mask (`torch.BoolTensor` of shape `(batch_size, num_rows * K, past_len + num_rows * K)`): True
                where a slot may attend; queries and new keys are ordered row-major `(row, slot)`.
            past_key_values: per layer, rotated keys and values `(batch_size, num_kv_heads, past_len, head_dim)`.
        """
        B, N = token_ids.shape
        K = self.block_size
        x = self.input_layer(condition, self.target_embedding(token_ids), condition_is_feature)  # (B, N, K, H)
        position_embeddings = self.rotary_emb(x, position_ids.reshape(B, N * K))
        key_values = []
        for index, layer in enumerate(self.layers):
            if index > 0:
                shifted = torch.cat([x[:, :, :1], x[:, :, :-1]], dim=2)  # slot k reads slot k-1; slot 0 itself
                x = self.shift_proj[index - 1](torch.cat([x, shifted], dim=-1))
            past = past_key_values[index] if past_key_values is not None else None
            flat, key_value = layer(x.reshape(B, N * K, -1), position_embeddings, attention_mask, past)
            x = flat.view(B, N, K, -1)
            key_values.append(key_value)
        normed = self.norm(x)
        logits = self.lm_head(normed)
        rank_input = torch.cat([normed.detach(), rank_features(logits).to(normed.dtype)], dim=-1)
        return SpecBlockOutput(
            hidden_states=x, logits=logits, rank_logits=self.rank_head(rank_input), key_values=key_values
        )


__all__ = ["SpecBlockDrafter", "SpecBlockOutput", "rank_features"]
