"""An independent, loop-by-loop re-computation of the backbone's forward from its weights.

Tests compare the model against it; it shares no code with ``sat`` beyond reading parameters.
Knobs switch parts off so that hook overrides can be checked against an exact expectation.
"""

from __future__ import annotations

import math

import torch

from sat.ops.layernorm import RMSNorm


def norm(module, x):
    if isinstance(module, RMSNorm):
        return module.weight * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + module.variance_epsilon))
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + module.eps) * module.weight + module.bias


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def linear(module, x):
    y = x @ module.weight.T
    return y if module.bias is None else y + module.bias


def rotary(x, positions, base, rot_dim):
    """RoPE through complex multiplication: channel i pairs with channel i + rot_dim / 2."""
    half = rot_dim // 2
    freqs = base ** (-torch.arange(0, half, dtype=torch.float64) * 2 / rot_dim)
    angles = positions.double()[:, None, :, None] * freqs  # [b, 1, s, half]
    pairs = torch.complex(x[..., :half].double(), x[..., half:rot_dim].double()) * torch.polar(
        torch.ones_like(angles), angles
    )
    return torch.cat([pairs.real.to(x.dtype), pairs.imag.to(x.dtype), x[..., rot_dim:]], dim=-1)


def attention(layer, transformer, x, positions, mask, zero_context=False):
    attn = layer.attention
    heads, head_size = attn.num_attention_heads, attn.hidden_size_per_attention_head
    kv_heads = attn.num_multi_query_heads or heads
    qkv = linear(attn.query_key_value, x)
    b, s, _ = x.shape
    q = qkv[..., : heads * head_size].view(b, s, heads, head_size).transpose(1, 2)
    k = qkv[..., heads * head_size : (heads + kv_heads) * head_size].view(b, s, kv_heads, head_size).transpose(1, 2)
    v = qkv[..., (heads + kv_heads) * head_size :].view(b, s, kv_heads, head_size).transpose(1, 2)
    if transformer.is_rotary_emb:
        q = rotary(q, positions, transformer.rotary_base, transformer.position_embeddings.dim)
        k = rotary(k, positions, transformer.rotary_base, transformer.position_embeddings.dim)
    outputs = []
    for head in range(heads):
        kv = head // (heads // kv_heads)
        scores = q[:, head] @ k[:, kv].transpose(-1, -2) / math.sqrt(head_size)  # [b, s, s]
        if mask is not None:
            scores = scores.masked_fill(mask.reshape(-1, s, s) == 0, float("-inf"))
        outputs.append(torch.softmax(scores, dim=-1) @ v[:, kv])
    context = torch.cat(outputs, dim=-1)  # [b, s, heads * head_size]
    if zero_context:
        context = torch.zeros_like(context)
    return linear(attn.dense, context)


def mlp(layer, x):
    m = layer.mlp
    hidden = linear(m.dense_h_to_4h, x)
    if m.is_gated_mlp:
        hidden = gelu_tanh(linear(m.dense_h_to_4h_gate, x)) * hidden
    else:
        hidden = gelu_tanh(hidden)
    return linear(m.dense_4h_to_h, hidden)


def layer_forward(layer, transformer, h, positions, mask, zero_context=False, zero_attention=False, zero_mlp=False):
    def attn(x):
        out = attention(layer, transformer, x, positions, mask, zero_context)
        return torch.zeros_like(out) if zero_attention else out

    def ffn(x):
        out = mlp(layer, x)
        return torch.zeros_like(out) if zero_mlp else out

    if layer.layernorm_order == "post":
        y = norm(layer.input_layernorm, h)
        m = norm(layer.post_attention_layernorm, y + attn(y))
        return m + ffn(m)
    a = attn(norm(layer.input_layernorm, h))
    if layer.layernorm_order == "sandwich":
        a = norm(layer.third_layernorm, a)
    h = h + a
    f = ffn(norm(layer.post_attention_layernorm, h))
    if layer.layernorm_order == "sandwich":
        f = norm(layer.fourth_layernorm, f)
    return h + f


def reference_forward(
    model,
    input_ids,
    position_ids,
    mask=None,
    *,
    zero_tokens=False,
    drop_positions=False,
    zero_context=False,
    zero_attention=False,
    zero_mlp=False,
    skip_layers=False,
    hidden_only=False,
):
    """Logits ``[b, s, vocab]`` (or final hidden states with ``hidden_only``); ``mask`` is a
    1 = attend tensor or ``None`` for full attention."""
    t = model.transformer
    with torch.no_grad():
        h = t.word_embeddings.weight[input_ids]
        if zero_tokens:
            h = torch.zeros_like(h)
        if not t.is_rotary_emb and not drop_positions:
            h = h + t.position_embeddings.weight[position_ids]
        for layer in [] if skip_layers else t.layers:
            h = layer_forward(layer, t, h, position_ids, mask, zero_context, zero_attention, zero_mlp)
        if t.use_final_layernorm:
            h = norm(t.final_layernorm, h)
        return h if hidden_only else h @ t.word_embeddings.weight.T
