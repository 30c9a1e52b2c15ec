"""Change a model without rewriting it: ALiBi attention biases as one mixin.

ALiBi (Press et al., 2022) replaces position embeddings by a per-head linear penalty on the
distance between query and key. Two hooks do it: ``position_embedding_forward`` returns
``None`` (no absolute positions) and a ``@non_conflict`` ``attention_fn`` adds the bias through
``log_attention_weights`` before calling whatever attention implementation came before it, so
it composes with other attention mixins.

Run: ``python examples/custom_mixin.py``.
"""

from __future__ import annotations

import torch

from sat.model import BaseMixin, BaseModel


class ALiBiMixin(BaseMixin):
    def __init__(self, num_heads: int):
        super().__init__()
        # Geometric slopes 2^(-8/n), 2^(-16/n), ... as in the paper.
        slopes = torch.tensor([2 ** (-8 * (i + 1) / num_heads) for i in range(num_heads)])
        self.register_buffer("slopes", slopes, persistent=False)

    def position_embedding_forward(self, position_ids, output_cross_layer, **kw_args):
        return None

    @BaseMixin.non_conflict
    def attention_fn(self, q, k, v, mask, dropout_fn, old_impl=None, **kw_args):
        # q [b, heads, sq, hn], k [b, kv_heads, sk, hn]
        sq, sk = q.shape[-2], k.shape[-2]
        distance = torch.arange(sk, device=q.device)[None, :] - torch.arange(sq, device=q.device)[:, None] - (sk - sq)
        bias = self.slopes[:, None, None] * distance.clamp(max=0)  # [heads, sq, sk], 0 on the diagonal
        kw_args["log_attention_weights"] = bias.to(q.dtype)
        return old_impl(q, k, v, mask, dropout_fn, **kw_args)


def main() -> None:
    torch.manual_seed(0)
    args = BaseModel.get_args(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=50)
    model = BaseModel(args).eval()
    input_ids = torch.randint(0, 50, (1, 8))
    positions = torch.arange(8).unsqueeze(0)
    before = model(input_ids, positions, -1)[0]

    model.add_mixin("alibi", ALiBiMixin(num_heads=4))
    print(model.describe_hooks())
    after = model(input_ids, positions, -1)[0]
    # Without absolute positions, shifting the position ids changes nothing.
    shifted = model(input_ids, positions + 5, -1)[0]
    print(
        f"changed by the mixin: {(after - before).abs().max():.4f}; "
        f"invariant to position shift: {(after - shifted).abs().max():.1e}"
    )

    model.del_mixin("alibi")
    print(f"after del_mixin, back to the original: {torch.equal(model(input_ids, positions, -1)[0], before)}")


if __name__ == "__main__":
    main()
