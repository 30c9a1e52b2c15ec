"""Tensor model parallelism: process groups, parallel layers, collectives and RNG tracking.

At model-parallel size 1 (no ``initialize_model_parallel`` call) every layer and collective
works in a single process without ``torch.distributed``.
"""

from sat.mpu.chunked_cross_entropy import chunked_cross_entropy
from sat.mpu.cross_entropy import vocab_parallel_cross_entropy
from sat.mpu.data import broadcast_data
from sat.mpu.initialize import (
    destroy_model_parallel,
    get_data_parallel_group,
    get_data_parallel_rank,
    get_data_parallel_world_size,
    get_model_parallel_group,
    get_model_parallel_rank,
    get_model_parallel_src_rank,
    get_model_parallel_world_size,
    get_node_group,
    get_node_rank,
    get_node_src_rank,
    get_node_world_size,
    initialize_model_parallel,
    model_parallel_is_initialized,
)
from sat.mpu.layers import (
    ColumnParallelLinear,
    HeadInputs,
    RowParallelLinear,
    VocabParallelEmbedding,
    deferred_vocab_logits,
    vocab_parallel_logits,
)
from sat.mpu.mappings import (
    copy_to_model_parallel_region,
    gather_from_model_parallel_region,
    reduce_from_model_parallel_region,
    scatter_to_model_parallel_region,
)
from sat.mpu.operation import mp_split_model, mp_split_model_rank0, mp_split_model_receive
from sat.mpu.random import (
    checkpoint,
    get_cuda_rng_tracker,
    model_parallel_cuda_manual_seed,
    model_parallel_dropout_context,
)
from sat.mpu.utils import divide, scaled_init_method, split_tensor_along_last_dim, unscaled_init_method

__all__ = [
    "ColumnParallelLinear",
    "HeadInputs",
    "RowParallelLinear",
    "VocabParallelEmbedding",
    "broadcast_data",
    "checkpoint",
    "chunked_cross_entropy",
    "copy_to_model_parallel_region",
    "deferred_vocab_logits",
    "destroy_model_parallel",
    "divide",
    "gather_from_model_parallel_region",
    "get_cuda_rng_tracker",
    "get_data_parallel_group",
    "get_data_parallel_rank",
    "get_data_parallel_world_size",
    "get_model_parallel_group",
    "get_model_parallel_rank",
    "get_model_parallel_src_rank",
    "get_model_parallel_world_size",
    "get_node_group",
    "get_node_rank",
    "get_node_src_rank",
    "get_node_world_size",
    "initialize_model_parallel",
    "model_parallel_cuda_manual_seed",
    "model_parallel_dropout_context",
    "model_parallel_is_initialized",
    "mp_split_model",
    "mp_split_model_rank0",
    "mp_split_model_receive",
    "reduce_from_model_parallel_region",
    "scaled_init_method",
    "scatter_to_model_parallel_region",
    "split_tensor_along_last_dim",
    "unscaled_init_method",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_logits",
]
