"""The text encoder's attention: transformers' SDPA, except that on CPU torch reads grouped KV heads in place.

transformers copies each layer's keys and values once per query head group whenever a mask is given (it
protects CUDA's fast kernels, which refuse masked GQA). On CPU that copy only costs memory and time: several
MB per layer at a thousand tokens, which the enhancer's chunked prompt reading would otherwise pay per chunk.
"""

from __future__ import annotations

import torch.nn.functional as F

NAME = "zimage_sdpa"


def sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """query [batch, heads, q_len, head_dim], key/value [batch, kv_heads, kv_len, head_dim] ->
    ([batch, q_len, heads, head_dim], None), as every transformers attention function."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.device.type != "cpu" or query.shape[1] == key.shape[1] or query.shape[2] == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    causal = attention_mask is None and (is_causal if is_causal is not None else getattr(module, "is_causal", True))
    if causal:  # a prompt read into an empty static cache: keys past the prompt are empty slots
        key, value = key[:, :, :query.shape[2]], value[:, :, :query.shape[2]]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, is_causal=causal, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """The name to put in a transformers config's attention implementation."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(NAME, sdpa)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])  # the same masks as "sdpa"
    return NAME
