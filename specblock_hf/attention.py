"""Drafter attention over an explicit key/value past and an arbitrary boolean mask (tree- and block-shaped)."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

KeyValue = tuple[torch.Tensor, torch.Tensor]


class DraftAttention(nn.Module):
    """
    Llama GQA attention whose queries attend to `past` keys plus their own keys under a caller-built mask.

    The drafters keep their own key/value cache (SpecBlock stores K slots per entry) and build tree and block masks
    themselves, so this layer takes the past and the mask explicitly instead of a `Cache` object.
    """

    def __init__(self, config, input_size: int):
        super().__init__()
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        bias = config.attention_bias
        self.q_proj = nn.Linear(input_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(input_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(input_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor,
        past_key_value: KeyValue | None = None,
    ) -> tuple[torch.Tensor, KeyValue]:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(batch_size, num_queries, input_size)`)
            position_embeddings: RoPE `(cos, sin)`, each of shape `(batch_size, num_queries, head_dim)`.
            attention_mask (`torch.BoolTensor` of shape `(batch_size, num_queries, past_len + num_queries)`):
                True where a query may attend.
            past_key_value: rotated keys and values, each of shape `(batch_size, num_kv_heads, past_len, head_dim)`.

        Returns:
            The attention output `(batch_size, num_queries, hidden_size)` and this call's rotated keys and values,
            each `(batch_size, num_kv_heads, num_queries, head_dim)`, for the caller to cache.
        """
        B, Q, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(B, Q, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, Q, hd)
        key = self.k_proj(hidden_states).view(B, Q, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(hidden_states).view(B, Q, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        new_key_value = (key, value)
        if past_key_value is not None:
            key = torch.cat([past_key_value[0], key], dim=2)  # (B, nkv, S + Q, hd)
            value = torch.cat([past_key_value[1], value], dim=2)
        output = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask[:, None], enable_gqa=self.num_heads != self.num_key_value_heads
        )
        output = output.transpose(1, 2).reshape(B, Q, self.num_heads * self.head_dim)
        return self.o_proj(output), new_key_value
