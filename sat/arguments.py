"""Command-line arguments (``get_args``) and argument files (``update_args_with_file``).

``get_args`` accepts every flag of the original library with the same defaults. It needs
neither DeepSpeed nor CUDA: on a CPU machine it picks the gloo backend itself, and it has
``sat.runtime`` create a process group only for a multi-process launch or model parallelism.
The runtime functions the original library kept here (``initialize_distributed``,
``set_random_seed``...) are re-exported from ``sat.runtime``.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from sat.config import LAYERNORM_ORDERS, cli_default
from sat.helpers import print_rank0
from sat.runtime import (  # initialize_distributed and the seed functions are public here too, as in the original
    assign_device,
    ensure_model_parallel,  # noqa: F401
    initialize_distributed,
    reset_random_seed,  # noqa: F401
    set_random_seed,
)
from sat.runtime import init_model_only as _simple_init  # noqa: F401  (the original's name, imported by user code)

_TRAINING_CONFIG_DIR = os.path.join(os.path.dirname(__file__), "training")


def add_model_config_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Model architecture arguments."""
    group = parser.add_argument_group("model", "model configuration")
    group.add_argument("--num-layers", type=int, default=cli_default("num_layers"), help="num of layers")
    group.add_argument("--hidden-size", type=int, default=cli_default("hidden_size"), help="transformer hidden size")
    group.add_argument(
        "--num-attention-heads",
        type=int,
        default=cli_default("num_attention_heads"),
        help="num of transformer attention heads",
    )
    group.add_argument(
        "--vocab-size", type=int, default=cli_default("vocab_size"), help="vocab size; the size of word_embeddings"
    )
    group.add_argument(
        "--max-sequence-length",
        type=int,
        default=cli_default("max_sequence_length"),
        help="maximum number of position embeddings to use",
    )
    group.add_argument(
        "--layernorm-order",
        type=str,
        default=cli_default("layernorm_order"),
        choices=LAYERNORM_ORDERS,
        help='where the layer norms go: "pre", "post", "sandwich" or "parallel" (GPT-J)',
    )
    group.add_argument(
        "--inner-hidden-size",
        type=int,
        default=cli_default("inner_hidden_size"),
        help="MLP inner size; None means 4 * hidden-size",
    )
    group.add_argument(
        "--hidden-size-per-attention-head",
        type=int,
        default=cli_default("hidden_size_per_attention_head"),
        help="None means hidden-size / heads",
    )
    group.add_argument("--model-parallel-size", type=int, default=1, help="size of tensor model parallelism")
    group.add_argument("--skip-init", action="store_true", help="skip initialisation (weights must be loaded)")
    group.add_argument("--use-gpu-initialization", action="store_true", help="initialise the model on the GPU")
    group.add_argument(
        "--num-multi-query-heads",
        type=int,
        default=cli_default("num_multi_query_heads"),
        help="number of key/value heads (0: multi-head attention)",
    )
    group.add_argument(
        "--is-gated-mlp", action="store_true", default=cli_default("is_gated_mlp"), help="gated MLP (GLU), as in LLaMA"
    )
    group.add_argument(
        "--is-rotary-emb",
        action="store_true",
        default=cli_default("is_rotary_emb"),
        help="built-in rotary position embedding",
    )
    group.add_argument(
        "--rotary-base", type=float, default=cli_default("rotary_base"), help="frequency base of the rotary embedding"
    )
    group.add_argument(
        "--rotary-dim", type=int, default=cli_default("rotary_dim"), help="rotated channels per head (None: all)"
    )
    group.add_argument(
        "--rotary-interleaved",
        action="store_true",
        default=cli_default("rotary_interleaved"),
        help="rotate channel pairs (2i, 2i + 1), as GPT-J, instead of halves",
    )
    group.add_argument(
        "--layernorm-epsilon", type=float, default=cli_default("layernorm_epsilon"), help="layer norm epsilon"
    )
    group.add_argument(
        "--hidden-dropout",
        type=float,
        default=cli_default("hidden_dropout"),
        help="dropout probability of hidden states",
    )
    group.add_argument(
        "--attention-dropout",
        type=float,
        default=cli_default("attention_dropout"),
        help="dropout probability of attention weights",
    )
    group.add_argument("--drop-path", type=float, default=cli_default("drop_path"), help="drop path probability")
    group.add_argument(
        "--make-vocab-size-divisible-by",
        type=int,
        default=128,
        help="pad the vocab size to a multiple of this",
    )
    group.add_argument(
        "--parallel-output",
        action="store_true",
        default=cli_default("parallel_output"),
        help="keep model-parallel logits split (for mpu.vocab_parallel_cross_entropy)",
    )
    return parser


def add_training_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Training arguments."""
    group = parser.add_argument_group("train", "training configurations")
    group.add_argument(
        "--experiment-name", type=str, default="MyModel", help="name of the run's summaries and checkpoints"
    )
    group.add_argument("--train-iters", type=int, default=None, help="total number of training iterations")
    group.add_argument("--batch-size", type=int, default=4, help="batch size per data-parallel rank")
    group.add_argument("--lr", type=float, default=1.0e-4, help="initial learning rate")
    group.add_argument(
        "--mode",
        type=str,
        default="pretrain",
        choices=["pretrain", "finetune", "inference"],
        help="pretrain: continue a run; finetune: start at iteration 0; inference: no training",
    )
    group.add_argument("--seed", type=int, default=1234, help="random seed")
    group.add_argument("--zero-stage", type=int, default=0, choices=[0, 1, 2, 3], help="DeepSpeed ZeRO stage")
    group.add_argument(
        "--engine",
        type=str,
        default="deepspeed",
        choices=["deepspeed", "fsdp"],
        help="training engine: DeepSpeed (ZeRO 0-3) or PyTorch FSDP2 (fully_shard per layer; docs/training.md)",
    )
    group.add_argument(
        "--checkpoint-activations",
        action="store_true",
        default=cli_default("checkpoint_activations"),
        help="recompute activations in backward",
    )
    group.add_argument(
        "--checkpoint-num-layers",
        type=int,
        default=cli_default("checkpoint_num_layers"),
        help="layers per checkpointed chunk",
    )
    group.add_argument(
        "--checkpoint-skip-layers",
        type=int,
        default=cli_default("checkpoint_skip_layers"),
        help="do not checkpoint the last N layers",
    )
    group.add_argument("--fp16", action="store_true", help="train in fp16")
    group.add_argument("--bf16", action="store_true", help="train in bf16")
    group.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each transformer layer as one graph (sat.model.compile.compile_layers)",
    )
    group.add_argument("--gradient-accumulation-steps", type=int, default=1, help="micro-batches per optimizer step")
    group.add_argument("--profiling", type=int, default=-1, help="-1: off; N: profile after N warm-up iterations")
    group.add_argument("--epochs", type=int, default=None, help="number of training epochs")
    group.add_argument("--log-interval", type=int, default=50, help="iterations between log lines")
    group.add_argument("--summary-dir", type=str, default="", help="directory for tensorboard summaries")
    group.add_argument("--save-args", action="store_true", help="save the arguments with the experiment")
    group.add_argument("--lr-decay-iters", type=int, default=None, help="iterations to decay over (train-iters)")
    group.add_argument(
        "--lr-decay-style",
        type=str,
        default="linear",
        choices=["constant", "linear", "cosine", "exponential"],
        help="learning rate decay function",
    )
    group.add_argument("--lr-decay-ratio", type=float, default=0.1, help="final lr as a fraction of lr")
    group.add_argument("--warmup", type=float, default=0.01, help="fraction of iterations to warm up over")
    group.add_argument("--weight-decay", type=float, default=0.01, help="weight decay coefficient")
    group.add_argument("--save", type=str, default=None, help="directory to save checkpoints to")
    group.add_argument("--load", type=str, default=None, help="directory holding a checkpoint to load")
    group.add_argument("--force-train", action="store_true", help="train even if checkpoint keys are missing")
    group.add_argument("--save-interval", type=int, default=5000, help="iterations between checkpoints")
    group.add_argument(
        "--checkpoint-format",
        default="pt",
        choices=["pt", "safetensors"],
        help="model files of saved checkpoints: pt (the original's mp_rank_XX_model_states.pt) or safetensors",
    )
    group.add_argument(
        "--max-shard-size",
        default="5GB",
        help="with --checkpoint-format safetensors, split each rank's weights into shards of at most this "
        "size (bytes, or e.g. 500MB, 2GiB)",
    )
    group.add_argument(
        "--save-keep",
        type=int,
        default=None,
        help="keep only the newest N checkpoints (never the one resumed from); default: keep all",
    )
    group.add_argument("--no-save-rng", action="store_true", help="do not save random states")
    group.add_argument("--no-load-rng", action="store_true", help="do not restore random states")
    group.add_argument("--resume-dataloader", action="store_true", help="resume the data position on --load")
    group.add_argument(
        "--distributed-backend",
        default=None,
        help="torch.distributed backend; default nccl with CUDA, gloo otherwise",
    )
    group.add_argument(
        "--local_rank",
        "--local-rank",  # how `python -m torch.distributed.launch` passes it since torch 2.0
        type=int,
        default=None,
        help="local rank passed by the launcher",
    )
    group.add_argument("--exit-interval", type=int, default=None, help="exit after this many iterations")
    group.add_argument("--wandb", action="store_true", help="also log to wandb (must be installed)")
    group.add_argument("--wandb-project-name", type=str, default="default_project", help="wandb project")
    return parser


def add_evaluation_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Evaluation arguments."""
    group = parser.add_argument_group("validation", "validation configurations")
    group.add_argument("--eval-batch-size", type=int, default=None, help="defaults to --batch-size")
    group.add_argument("--eval-iters", type=int, default=100, help="batches per evaluation")
    group.add_argument("--eval-interval", type=int, default=None, help="iterations between evaluations")
    group.add_argument("--strict-eval", action="store_true", help="evaluate the whole set exactly once")
    return parser


def _bool_or_custom(value: str) -> bool | str:
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    if lowered == "custom":
        return "custom"
    raise argparse.ArgumentTypeError(f"expected True, False or custom, got {value!r}")


def add_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Data arguments."""
    group = parser.add_argument_group("data", "data configurations")
    group.add_argument("--train-data", nargs="+", default=None, help="training data paths (hf://name for HF)")
    group.add_argument(
        "--train-data-weights",
        nargs="+",
        default=None,
        type=int,
        help="integer weight per --train-data entry",
    )
    group.add_argument(
        "--iterable-dataset",
        type=_bool_or_custom,
        nargs="?",
        const=True,
        default=False,
        help="iterable training data; 'custom' lets the dataset build its own batches",
    )
    group.add_argument(
        "--iterable-dataset-eval",
        default="",
        type=str,
        choices=["True", "False", ""],
        help="eval data iterable",
    )
    group.add_argument("--batch-from-same-dataset", action="store_true", help="draw each batch from one source")
    group.add_argument("--valid-data", nargs="*", default=None, help="validation data paths")
    group.add_argument("--test-data", nargs="*", default=None, help="test data paths")
    group.add_argument("--split", default="1000,1,1", help="train,valid,test proportions when no valid data")
    group.add_argument("--num-workers", type=int, default=1, help="data loader workers")
    group.add_argument("--block-size", type=int, default=10000, help="block size of the shuffled split")
    group.add_argument("--prefetch-factor", type=int, default=4, help="batches prefetched per worker")
    return parser


def add_text_generate_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Text generation arguments."""
    group = parser.add_argument_group("Text generation", "configurations")
    group.add_argument("--temperature", type=float, default=1.0)
    group.add_argument("--top_p", type=float, default=0.0)
    group.add_argument("--top_k", type=int, default=0)
    group.add_argument("--num-beams", type=int, default=1)
    group.add_argument("--length-penalty", type=float, default=0.0)
    group.add_argument("--no-repeat-ngram-size", type=int, default=0)
    group.add_argument("--min-tgt-length", type=int, default=0)
    group.add_argument("--out-seq-length", type=int, default=256)
    group.add_argument("--input-source", type=str, default="interactive", help="'interactive' or a file path")
    group.add_argument("--output-path", type=str, default="./samples", help="where generated samples go")
    group.add_argument("--with-id", action="store_true", help="each input line starts with an id")
    group.add_argument("--max-inference-batch-size", type=int, default=12)
    group.add_argument("--device", type=int, default=-1, help="-1: the launcher's local rank, or CPU")
    return parser


def add_tokenization_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Tokenizer arguments."""
    group = parser.add_argument_group("Tokenization", "tokenization configurations")
    group.add_argument("--tokenizer-type", type=str, default="fake", help="type name of tokenizer")
    return parser


def add_deepspeed_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """DeepSpeed's own flags (``--deepspeed``, ``--deepspeed_config``...) when it is installed;
    the same two flags otherwise, so ``args`` looks the same either way."""
    try:
        import deepspeed
    except ImportError:
        pass
    else:
        return deepspeed.add_config_arguments(parser)
    group = parser.add_argument_group("DeepSpeed", "DeepSpeed configurations")
    group.add_argument("--deepspeed", default=False, action="store_true", help="enable DeepSpeed")
    group.add_argument("--deepspeed_config", default=None, type=str, help="DeepSpeed json configuration file")
    return parser


def get_args(args_list: list[str] | None = None, parser: argparse.ArgumentParser | None = None):
    """Parse every sat argument (``args_list`` or ``sys.argv``), add derived values, set up
    distributed state when launched with several processes, and seed the random generators."""
    parser = parser if parser is not None else argparse.ArgumentParser(description="sat")
    for add in (
        add_model_config_args,
        add_training_args,
        add_evaluation_args,
        add_data_args,
        add_tokenization_args,
        add_text_generate_args,
        add_deepspeed_args,
    ):
        parser = add(parser)
    args = parser.parse_args(args_list)

    if args.iterable_dataset_eval == "":
        args.iterable_dataset_eval = args.iterable_dataset
    else:
        args.iterable_dataset_eval = args.iterable_dataset_eval == "True"
    if not args.train_data:
        print_rank0("No training data specified", level="DEBUG")
    if args.train_iters is not None and args.epochs is not None:
        parser.error("only one of --train-iters and --epochs may be set")
    if args.train_iters is None and args.epochs is None:
        args.train_iters = 10000
        if args.mode != "inference":
            print_rank0("No --train-iters or --epochs given; training for 10000 iterations.", level="WARNING")
    if args.train_data_weights is not None and len(args.train_data_weights) != len(args.train_data or []):
        parser.error(f"--train-data-weights {args.train_data_weights} needs one weight per --train-data entry")
    if args.fp16 and args.bf16:
        parser.error("--fp16 and --bf16 are exclusive")
    if args.save_keep is not None and args.save_keep < 1:
        parser.error(f"--save-keep {args.save_keep}: keep at least 1 checkpoint (or leave it out to keep all)")

    args.cuda = torch.cuda.is_available()
    args.rank = int(os.getenv("RANK", "0"))
    args.world_size = int(os.getenv("WORLD_SIZE", "1"))
    if args.local_rank is None:
        args.local_rank = int(os.getenv("LOCAL_RANK", "0"))
    assign_device(args)  # -1 (unset): the local rank's CUDA device, or "cpu"
    if args.distributed_backend is None:
        args.distributed_backend = "nccl" if args.cuda else "gloo"
    if args.rank == 0:
        print_rank0(f"using world size: {args.world_size} and model-parallel size: {args.model_parallel_size}")

    if args.mode != "inference":
        args.deepspeed = True
        _configure_deepspeed(args)
        if args.engine == "fsdp":
            _check_fsdp_args(parser, args)
    if args.world_size > 1 or args.model_parallel_size > 1:
        initialize_distributed(args)
    set_random_seed(args.seed)
    return args


def _check_fsdp_args(parser: argparse.ArgumentParser, args) -> None:
    """``--engine fsdp`` shards the model itself over the data-parallel ranks, in fp32 or bf16."""
    if args.model_parallel_size > 1:
        parser.error(
            f"--engine fsdp with --model-parallel-size {args.model_parallel_size}: FSDP here shards over data "
            "parallelism only; use --engine deepspeed for model parallelism"
        )
    if args.zero_stage != 0:
        parser.error(
            f"--engine fsdp shards parameters, gradients and optimizer states itself: drop --zero-stage "
            f"{args.zero_stage} (or the zero_optimization stage of --deepspeed_config)"
        )
    if args.fp16:
        parser.error("--engine fsdp trains in fp32 or --bf16 (fp16 would need a loss scaler): use --bf16")


def _configure_deepspeed(args) -> None:
    """Turn ``args.deepspeed_config`` into a dict: the shipped ZeRO config for
    ``--zero-stage``, overridden by the command line; or the user's file, which overrides the
    command line instead."""
    args.deepspeed_activation_checkpointing = args.checkpoint_activations
    if args.deepspeed_config is None:
        with open(os.path.join(_TRAINING_CONFIG_DIR, f"deepspeed_zero{args.zero_stage}.json")) as f:
            config = json.load(f)
        config.setdefault("fp16", {})["enabled"] = args.fp16
        config.setdefault("bf16", {})["enabled"] = args.bf16
        config["train_micro_batch_size_per_gpu"] = args.batch_size
        config["gradient_accumulation_steps"] = args.gradient_accumulation_steps
        params = config.setdefault("optimizer", {}).setdefault("params", {})
        params["lr"] = args.lr
        params["weight_decay"] = args.weight_decay
    else:
        config = args.deepspeed_config
        if not isinstance(config, dict):
            with open(config) as f:
                config = json.load(f)
        print_rank0("Arguments are overridden by the values in --deepspeed_config.")
        args.fp16 = config.get("fp16", {}).get("enabled", False)
        args.bf16 = config.get("bf16", {}).get("enabled", False)
        args.batch_size = config.get("train_micro_batch_size_per_gpu", args.batch_size)
        args.gradient_accumulation_steps = config.get("gradient_accumulation_steps", args.gradient_accumulation_steps)
        params = config.get("optimizer", {}).get("params", {})
        args.lr = params.get("lr", args.lr)
        args.weight_decay = params.get("weight_decay", args.weight_decay)
        args.zero_stage = config.get("zero_optimization", {}).get("stage", args.zero_stage)
    args.deepspeed_config = config


def update_args_with_file(args, path: str):
    """Set every key of the JSON file ``path`` on ``args`` (file values win). Keys ending in
    ``_path`` are taken relative to the file's folder, and so is a ``tokenizer_type`` naming
    something inside it (a checkpoint that ships its tokenizer)."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"no configuration file at {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(config).__name__}")
    folder = os.path.dirname(os.path.abspath(path))
    for key, value in config.items():
        if key.endswith("_path") and isinstance(value, str):
            config[key] = os.path.join(folder, value)
    if isinstance(config.get("tokenizer_type"), str):
        from sat.tokenization import resolve_tokenizer_type

        config["tokenizer_type"] = resolve_tokenizer_type(config["tokenizer_type"], folder)
    merged = {**vars(args), **config}
    return argparse.Namespace(**merged)


def overwrite_args_by_dict(args, overwrite_args: dict | None = None):
    """Set ``overwrite_args`` on ``args``. The key ``decoder_freq=n`` makes every n-th layer a
    decoder layer (``is_decoder`` becomes a per-layer list)."""
    overwrite_args = dict(overwrite_args or {})
    decoder_freq = overwrite_args.pop("decoder_freq", None)
    for key, value in overwrite_args.items():
        setattr(args, key, value)
    if decoder_freq is not None:
        args.is_decoder = [i % decoder_freq == 0 for i in range(args.num_layers)]
    return args
