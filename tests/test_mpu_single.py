"""sat.mpu in one process without torch.distributed: layers, partitioning, accessors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sat import mpu
from sat.model import BaseModel
from sat.mpu.partition import merge_strided, split_strided
from sat.runtime import ensure_model_parallel


def test_accessors_without_process_group():
    assert not torch.distributed.is_initialized()
    assert mpu.get_model_parallel_world_size() == 1 and mpu.get_model_parallel_rank() == 0
    assert mpu.get_data_parallel_world_size() == 1 and mpu.get_data_parallel_rank() == 0
    assert mpu.get_model_parallel_src_rank() == 0 and mpu.get_node_rank() == 0
    assert not mpu.model_parallel_is_initialized()
    with pytest.raises(RuntimeError, match="model parallel group is not initialized"):
        mpu.get_model_parallel_group()


def test_building_and_running_a_model_creates_no_process_group():
    args = BaseModel.get_args(num_layers=1, hidden_size=16, num_attention_heads=2, model_parallel_size=1)
    model = BaseModel(args)
    model(torch.zeros(1, 3, dtype=torch.long), torch.arange(3)[None], -1)
    assert not torch.distributed.is_initialized()


def test_building_a_model_parallel_model_never_starts_a_process_group():
    args = BaseModel.get_args(num_layers=1, hidden_size=16, num_attention_heads=2, model_parallel_size=2)
    with pytest.raises(RuntimeError, match=r"needs torch.distributed.*sat.runtime.ensure_model_parallel\(2\)"):
        BaseModel(args)
    assert not torch.distributed.is_initialized()


def test_model_parallel_size_above_one_needs_processes(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="needs a multiple of 2 processes, this run has WORLD_SIZE=1"):
        ensure_model_parallel(2)
    assert not torch.distributed.is_initialized()


def test_layers_compute_plain_linear_and_embedding():
    x = torch.randn(3, 5, 8)
    column = mpu.ColumnParallelLinear(8, 12, stride=3)
    row = mpu.RowParallelLinear(12, 8, input_is_parallel=True, final_bias=False)
    embedding = mpu.VocabParallelEmbedding(20, 8)
    assert column.weight.shape == (12, 8) and row.weight.shape == (8, 12) and embedding.weight.shape == (20, 8)
    assert column.weight.model_parallel and not row.bias.model_parallel
    with torch.no_grad():
        row.bias.uniform_()
    assert (column(x) - F.linear(x, column.weight, column.bias)).abs().max() < 1e-6
    y = torch.randn(3, 5, 12)
    assert (row(y) - F.linear(y, row.weight, row.bias)).abs().max() < 1e-6
    ids = torch.randint(0, 20, (3, 5))
    assert torch.equal(embedding(ids), embedding.weight[ids])


def test_meta_layers_and_reset_parameters_initialises():
    with torch.device("meta"):
        layer = mpu.ColumnParallelLinear(8, 6, skip_init=True)
    assert layer.weight.is_meta and layer.bias.is_meta
    layer = layer.to_empty(device="cpu")
    layer.reset_parameters()
    assert 0.005 < layer.weight.std().item() < 0.05 and torch.count_nonzero(layer.bias) == 0


@pytest.mark.parametrize("stride", [3, [4, 2, 2]])
def test_strided_partition_keeps_qkv_blocks_together(stride):
    # Rows 0..15 as a fused [Q; K; V] weight; with GQA, Q has 4 heads and K/V 2 (head size 2).
    full = torch.arange(16 if stride == [4, 2, 2] else 18, dtype=torch.float).unsqueeze(1).repeat(1, 3)
    shards = split_strided(full, 2, stride)
    if stride == 3:  # Q rows 0-5, K 6-11, V 12-17: each rank takes half of each block
        assert shards[0][:, 0].tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14]
    else:  # Q rows 0-7, K 8-11, V 12-15
        assert shards[1][:, 0].tolist() == [4, 5, 6, 7, 10, 11, 14, 15]
    assert torch.equal(merge_strided(shards, stride), full)


def test_layer_partition_and_merge_round_trip():
    column = mpu.ColumnParallelLinear(4, 12, stride=3)
    weights, biases = column.partition(new_model_parallel_size=2)
    assert [w.shape for w in weights] == [(6, 4), (6, 4)] and len(biases) == 2
    target = mpu.ColumnParallelLinear(4, 12, stride=3)
    target.merge(weights, biases)
    assert torch.equal(target.weight, column.weight)

    row = mpu.RowParallelLinear(12, 4)
    weights, biases = row.partition(new_model_parallel_size=3)
    assert [w.shape for w in weights] == [(4, 4)] * 3
    target = mpu.RowParallelLinear(12, 4)
    target.merge(weights, biases)
    assert torch.equal(target.weight, row.weight) and torch.equal(target.bias, row.bias)

    embedding = mpu.VocabParallelEmbedding(10, 4)
    weights, _ = embedding.partition(new_model_parallel_size=2)
    assert torch.equal(torch.cat(weights), embedding.weight)
    with pytest.raises(ValueError, match="cannot split a block of size 10"):
        mpu.VocabParallelEmbedding(10, 4).partition(new_model_parallel_size=3)


def test_vocab_parallel_cross_entropy_and_broadcast_data_single_process():
    logits = torch.randn(2, 5, 11)
    target = torch.randint(0, 11, (2, 5))
    loss = mpu.vocab_parallel_cross_entropy(logits, target)
    assert loss.shape == (2, 5)
    assert (
        loss - F.cross_entropy(logits.reshape(-1, 11), target.reshape(-1), reduction="none").view(2, 5)
    ).abs().max() < 1e-6
    data = mpu.broadcast_data(["a"], {"a": torch.tensor([1, 2])}, torch.int64)
    assert torch.equal(data["a"], torch.tensor([1, 2]))


def test_rng_tracker_fork_is_independent_and_restores_stream():
    tracker = mpu.get_cuda_rng_tracker()
    mpu.model_parallel_cuda_manual_seed(10)
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    with tracker.fork():
        forked = torch.rand(1)
    assert torch.equal(torch.rand(1), expected_next)  # the default stream did not move
    states = tracker.get_states()
    with tracker.fork():
        second = torch.rand(1)
    tracker.set_states(states)
    with tracker.fork():
        assert torch.equal(torch.rand(1), second)  # restored states replay the stream
    assert not torch.equal(forked, second)


def test_checkpoint_recomputes_model_parallel_dropout_with_the_forward_masks():
    tracker = mpu.get_cuda_rng_tracker()
    mpu.model_parallel_cuda_manual_seed(5)
    weight = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(4, 8)

    def block(inputs):
        with tracker.fork():  # dropout on model-parallel activations draws from the tracker
            return F.dropout(inputs @ weight, 0.5, training=True)

    start = tracker.get_states()
    block(x).pow(2).sum().backward()
    expected_grad, after_forward = weight.grad.clone(), tracker.get_states()
    weight.grad = None
    tracker.set_states(start)
    mpu.checkpoint(block, x).pow(2).sum().backward()
    assert torch.equal(weight.grad, expected_grad)  # the recomputation used the forward's masks
    for name, state in tracker.get_states().items():
        assert torch.equal(state, after_forward[name])  # and did not advance the tracker again
