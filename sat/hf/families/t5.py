"""T5 (``T5ForConditionalGeneration``) <-> ``T5Model``, v1.0 (ReLU, tied head) and v1.1
(gated GELU, own ``lm_head``).

HF's ``shared`` embedding is sat's encoder word embedding, which the decoder shares; the
relative attention bias lives in the first block of each stack. The encoder and the decoder
may have different layer counts, and the head's rows depend on whether it is tied, so the map
is built per model (``T5Family.state_map``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sat.hf.family import Family, register_family
from sat.hf.mapping import StateDictMap, concat, tied

# transformers names all of these; T5 ties them to `shared` (the head only in v1.0).
_EMBEDDING_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_HEAD = "lm_head.weight"


QKV = concat(lambda ctx: [ctx["inner"]] * 3, "qkv")
KV = concat(lambda ctx: [ctx["inner"]] * 2, "kv")


def stack_rows(half: str, gated: bool) -> list[tuple]:
    """Rows of the encoder or decoder stack (``half``), ``{}`` being the block index."""
    sat, hf = f"{half}.transformer.layers.{{}}.", f"{half}.block.{{}}.layer."
    is_decoder = half == "decoder"
    mlp = hf + ("2" if is_decoder else "1")  # T5's sub-layers: self-attention, [cross], MLP
    rows = [
        (sat + "input_layernorm.weight", hf + "0.layer_norm.weight"),
        (sat + "attention.query_key_value.weight", tuple(f"{hf}0.SelfAttention.{n}.weight" for n in "qkv"), QKV),
        (sat + "attention.dense.weight", hf + "0.SelfAttention.o.weight"),
        (sat + "post_attention_layernorm.weight", mlp + ".layer_norm.weight"),
        (sat + "mlp.dense_4h_to_h.weight", mlp + ".DenseReluDense.wo.weight"),
        (f"{half}.transformer.final_layernorm.weight", f"{half}.final_layer_norm.weight"),
        (
            f"{half}.mixins.t5-attention.relative_attention_bias.weight",
            f"{half}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        ),
    ]
    if gated:  # act(wi_0 x) * wi_1 x, the backbone's act(gate x) * (h_to_4h x)
        rows += [
            (sat + "mlp.dense_h_to_4h_gate.weight", mlp + ".DenseReluDense.wi_0.weight"),
            (sat + "mlp.dense_h_to_4h.weight", mlp + ".DenseReluDense.wi_1.weight"),
        ]
    else:
        rows.append((sat + "mlp.dense_h_to_4h.weight", mlp + ".DenseReluDense.wi.weight"))
    if is_decoder:
        cross = hf + "1.EncDecAttention."
        rows += [
            (sat + "post_cross_attention_layernorm.weight", hf + "1.layer_norm.weight"),
            (sat + "cross_attention.query.weight", cross + "q.weight"),
            (sat + "cross_attention.key_value.weight", (cross + "k.weight", cross + "v.weight"), KV),
            (sat + "cross_attention.dense.weight", cross + "o.weight"),
        ]
    return rows


def embedding_rows(tied_head: bool) -> list[tuple]:
    shared = ("shared.weight", _EMBEDDING_ALIASES[0]) + ((_HEAD,) if tied_head else ())
    rows = [
        ("encoder.transformer.word_embeddings.weight", shared, tied(len(shared))),
        ("decoder.transformer.word_embeddings.weight", _EMBEDDING_ALIASES[1]),  # the same tensor in sat
    ]
    if not tied_head:
        rows.append(("decoder.mixins.t5-final.lm_head.weight", _HEAD))
    return rows


@dataclass(frozen=True)
class T5Family(Family):
    """A family whose map depends on the model: per-stack layer counts, tied or own head."""

    def state_map(self, args) -> StateDictMap:
        parts = [
            StateDictMap.build(stack_rows("encoder", args.gated_gelu_mlp), args.num_layers),
            StateDictMap.build(stack_rows("decoder", args.gated_gelu_mlp), args.dec_num_layers or args.num_layers),
            StateDictMap.build(embedding_rows(not args.no_share_embeddings), 0),
        ]
        return StateDictMap([entry for part in parts for entry in part.entries], self.ignore_hf)


def _scales_decoder_outputs(config) -> bool:
    # transformers 5 records v1.0's rescaled tied head as scale_decoder_outputs and ties the
    # weights either way; 4.x said both with tie_word_embeddings.
    return bool(getattr(config, "scale_decoder_outputs", config.tie_word_embeddings))


def config_to_args(config) -> dict:
    variant = (config.is_gated_act, config.dense_act_fn)
    if variant not in ((False, "relu"), (True, "gelu_new")):
        raise ValueError(
            f"T5 with feed_forward_proj={config.feed_forward_proj!r} is not supported (relu or gated-gelu only)"
        )
    heads, head_size = config.num_heads, config.d_kv
    return dict(
        num_layers=config.num_layers,
        dec_num_layers=None if config.num_decoder_layers == config.num_layers else config.num_decoder_layers,
        hidden_size=config.d_model,
        num_attention_heads=heads,
        hidden_size_per_attention_head=None if heads * head_size == config.d_model else head_size,
        inner_hidden_size=config.d_ff,
        vocab_size=config.vocab_size,
        layernorm_epsilon=config.layer_norm_epsilon,
        hidden_dropout=config.dropout_rate,
        attention_dropout=config.dropout_rate,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance,
        init_method_std=config.initializer_factor,
        gated_gelu_mlp=config.is_gated_act,
        no_share_embeddings=not _scales_decoder_outputs(config),
    )


def model_to_config(model):
    from transformers import T5Config

    enc, dec = model.encoder.transformer, model.decoder.transformer
    sizes = ("hidden_size", "num_attention_heads", "hidden_size_per_attention_head", "inner_hidden_size")
    differ = [name for name in sizes if getattr(enc, name) != getattr(dec, name)]
    if differ:
        raise ValueError(f"transformers' T5 has one encoder and decoder size; this model's decoder differs in {differ}")
    attention = model.encoder.get_mixin("t5-attention")
    return T5Config(
        vocab_size=enc.vocab_size,
        d_model=enc.hidden_size,
        d_kv=enc.hidden_size_per_attention_head or enc.hidden_size // enc.num_attention_heads,
        d_ff=enc.inner_hidden_size or 4 * enc.hidden_size,
        num_layers=enc.num_layers,
        num_decoder_layers=dec.num_layers,
        num_heads=enc.num_attention_heads,
        relative_attention_num_buckets=attention.relative_attention_num_buckets,
        relative_attention_max_distance=attention.relative_attention_max_distance,
        dropout_rate=enc.layers[0].attention.output_dropout.p,
        layer_norm_epsilon=enc.layernorm_epsilon,
        initializer_factor=model.init_method_std,
        feed_forward_proj="gated-gelu" if enc.is_gated_mlp else "relu",
        tie_word_embeddings=model.decoder.get_mixin("t5-final").tie_word_embeddings,
        pad_token_id=0,  # T5's conventions: pad starts decoding, eos is 1
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def prepare_hf_state(state: dict, config) -> dict:
    shared = state["shared.weight"]
    tied_head = _scales_decoder_outputs(config)
    for key in _EMBEDDING_ALIASES + ((_HEAD,) if tied_head else ()):
        if key not in state:  # a tied copy that save_pretrained did not write
            state[key] = shared
        elif state[key].data_ptr() != shared.data_ptr() and not torch.equal(state[key], shared):
            raise ValueError(f"T5: {key} differs from shared.weight, but sat's T5Model ties them")
    if not tied_head:
        # v1.1's own head; transformers 5 ties it to `shared` and may not save it. Loading gives
        # sat's lm_head a storage of its own, so training keeps the two apart.
        state.setdefault(_HEAD, shared)
    return state


def context(args) -> dict:
    head_size = args.hidden_size_per_attention_head or args.hidden_size // args.num_attention_heads
    return {"inner": args.num_attention_heads * head_size}


register_family(
    T5Family(
        name="t5",
        model_types=("t5",),
        sat_class="T5Model",
        hf_class="T5ForConditionalGeneration",
        table=(),
        config_to_args=config_to_args,
        model_to_config=model_to_config,
        context=context,
        prepare_hf_state=prepare_hf_state,
        # Old checkpoints carry a cross-attention bias that T5 never uses.
        ignore_hf=(r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight",),
    )
)
