"""``BaseModel`` (a backbone plus mixins) and ``BaseMixin`` (a bundle of hooks and parameters)."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from collections.abc import Callable

import torch

from sat.config import TransformerConfig
from sat.helpers import moved_names, print_rank0
from sat.model.build import building_on_meta, get_model
from sat.model.hooks import HookError, collect_hooks, describe_chains, non_conflict, replacable
from sat.model.pretrained import load_pretrained
from sat.model.registry import MetaModel
from sat.model.transformer import BaseTransformer
from sat.runtime import init_device, require_model_parallel

__all__ = [
    "BaseMixin",
    "BaseModel",
    "HookError",
    "get_model",
    "non_conflict",
    "replacable",
]

_ARCHITECTURE_FIELDS = frozenset(f.name for f in dataclasses.fields(TransformerConfig))


class BaseMixin(torch.nn.Module):
    """A set of hooks (methods named after hooks) and the parameters they use.

    Inside a hook ``self`` is the mixin; ``self.transformer`` is the model's backbone, set when
    the mixin is added. Mark a hook ``@BaseMixin.non_conflict`` to wrap earlier hooks (it gets
    them as ``old_impl``), or ``@BaseMixin.replacable`` to let later mixins replace it.
    """

    non_conflict = non_conflict
    replacable = replacable

    def reinit(self, parent_model: BaseModel | None = None) -> None:
        """(Re)initialise this mixin's parameters, e.g. from the backbone's weights. Called by
        ``add_mixin(..., reinit=True)`` and when a finetune checkpoint lacks them."""


def fill_model_arg_defaults(model_cls: type, args: argparse.Namespace) -> None:
    """Give ``args`` the defaults of the arguments ``model_cls.add_model_specific_args`` adds
    that it lacks. Scripts that parse only the common arguments (the original's RoBERTa
    finetune examples call ``get_args`` without the model's group) then build the model with its
    defaults, where the original failed on ``args.num_types``. Values already set are kept."""
    if args is None:
        return
    parser = argparse.ArgumentParser(add_help=False)
    model_cls.add_model_specific_args(parser)
    try:
        defaults = vars(parser.parse_args([]))
    except SystemExit:  # a user's model argument that is required: nothing to default
        return
    for key, value in defaults.items():
        if not hasattr(args, key):
            setattr(args, key, value)


class BaseModel(torch.nn.Module, metaclass=MetaModel):
    """A ``BaseTransformer`` configured from ``args``, plus mixins.

    Keyword arguments override the values read from ``args`` (``is_decoder=True``,
    ``layernorm=RMSNorm``, ``activation_func=...``), so subclasses fix what their architecture
    needs. ``forward(input_ids, position_ids, attention_mask, **kw_args)`` returns
    ``(logits, *output_per_layers)``.
    """

    def __init__(self, args, transformer: BaseTransformer | None = None, params_dtype=torch.float, **kwargs):
        super().__init__()
        fill_model_arg_defaults(type(self), args)
        self.mixins = torch.nn.ModuleDict()
        self.collect_hooks_()
        if transformer is not None:
            self.transformer = transformer
            return
        # Never starts torch.distributed (get_args, training_main and from_pretrained do).
        require_model_parallel(getattr(args, "model_parallel_size", 1))
        device = torch.device("meta") if building_on_meta() else init_device(args)
        self._weights_may_be_missing = device.type == "meta"
        # The subclass's keywords win over args: it knows its architecture best.
        architecture = {key: value for key, value in kwargs.items() if key in _ARCHITECTURE_FIELDS}
        build = dict(
            hooks=self.hooks,
            params_dtype=params_dtype,
            skip_init=getattr(args, "skip_init", False),
            device=device,
        )
        build.update({key: value for key, value in kwargs.items() if key not in _ARCHITECTURE_FIELDS})
        try:
            config = TransformerConfig.from_args(args, **architecture)
        except ValueError as e:
            raise ValueError(
                f"{type(self).__name__}: {e}. Build args with {type(self).__name__}.get_args(...) or sat.get_args()."
            ) from None
        self.transformer = BaseTransformer(config=config, **build)

    # ----------------------------------------------------------------- hooks and mixins
    def collect_hooks_(self) -> dict[str, Callable]:
        """Rebuild ``self.hooks`` and ``self.hook_origins`` from the class and the mixins."""
        collected = collect_hooks(self, BaseModel, BaseMixin)
        self.hooks = collected.hooks
        self.hook_origins = collected.origins
        self._hook_chains = collected.chains
        return self.hooks

    def describe_hooks(self) -> str:
        """A readable table: for every hook, who implements it, outermost first."""
        return describe_chains(self._hook_chains)

    def add_mixin(self, name: str, new_mixin: BaseMixin, reinit: bool = False) -> None:
        """Add ``new_mixin`` under ``name``; its hooks take effect at once. With ``reinit``, call
        ``new_mixin.reinit(self)`` to initialise it from the current model."""
        if name in self.mixins:
            raise ValueError(f"a mixin named {name!r} already exists in {type(self).__name__}")
        if not isinstance(new_mixin, BaseMixin):
            raise TypeError(f"add_mixin expects a BaseMixin, got {type(new_mixin).__name__}")
        if hasattr(self.mixins, name):
            raise ValueError(f"mixin name {name!r} is taken by a torch.nn.ModuleDict attribute; choose another")
        self.mixins[name] = new_mixin
        object.__setattr__(new_mixin, "transformer", self.transformer)
        try:
            self.collect_hooks_()
        except HookError:
            del self.mixins[name]  # leave the model as it was
            self.collect_hooks_()
            raise
        if reinit:
            try:
                new_mixin.reinit(self)
            except Exception:
                self.del_mixin(name)  # leave the model as it was
                raise

    def del_mixin(self, name: str) -> BaseMixin:
        """Remove mixin ``name`` (and its hooks); returns it."""
        if name not in self.mixins:
            raise KeyError(f"no mixin named {name!r}; mixins: {list(self.mixins)}")
        mixin = self.mixins[name]
        del self.mixins[name]
        self.collect_hooks_()
        return mixin

    def get_mixin(self, name: str) -> BaseMixin:
        """The mixin added as ``name``."""
        if name not in self.mixins:
            raise KeyError(f"no mixin named {name!r}; mixins: {list(self.mixins)}")
        return self.mixins[name]

    def reinit(self, mixin_names: list[str] | None = None) -> None:
        """Call ``reinit`` on the named mixins (all when ``None``)."""
        for name, mixin in self.mixins.items():
            if mixin_names is None or name in mixin_names:
                mixin.reinit(self)

    def disable_untrainable_params(self) -> None:
        """Freeze parameters before training; subclasses override (the default freezes none)."""

    # ----------------------------------------------------------------- forward
    _weights_may_be_missing = False  # True after a meta build, until weights are checked

    def forward(self, *args, **kwargs):
        if self._weights_may_be_missing:
            self._check_weights_loaded()
        # The transformer may be shared by several models (encoder and decoder): install ours.
        self.transformer.hooks.clear()
        self.transformer.hooks.update(self.hooks)
        return self.transformer(*args, **kwargs)

    def _check_weights_loaded(self) -> None:
        missing = [name for name, p in self.named_parameters() if p.is_meta]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise RuntimeError(
                f"{type(self).__name__} was built on meta and these weights were never loaded: {shown}. "
                "Load a checkpoint (load_checkpoint, from_pretrained, or load_state_dict(..., assign=True))."
            )
        self._weights_may_be_missing = False

    # ----------------------------------------------------------------- arguments
    @classmethod
    def add_model_specific_args(cls, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Add this model's own command-line arguments to ``parser``; subclasses extend it."""
        return parser

    @classmethod
    def list_avail_args(cls, print: bool = True) -> argparse.ArgumentParser:
        """The parser of every argument this model reads (printed as a table by default)."""
        from sat.arguments import add_model_config_args
        from sat.helpers import print_parser

        parser = argparse.ArgumentParser(add_help=False)
        add_model_config_args(parser)
        cls.add_model_specific_args(parser)
        if print:
            print_parser(parser)
        return parser

    @classmethod
    def get_args(cls, **kwargs) -> argparse.Namespace:
        """The defaults of this model's arguments, with ``kwargs`` set on top.

        A key that is not an argument is set anyway (the original's behaviour, which user code
        relies on to carry its own settings), unless it is a near miss of an argument's name
        (``num_layrs``): that is a ``TypeError`` naming the argument meant.
        """
        args = cls.list_avail_args(print=False).parse_args([])
        for key, value in kwargs.items():
            if not hasattr(args, key):
                close = difflib.get_close_matches(key, vars(args), n=1, cutoff=0.85)
                if close:
                    raise TypeError(f"{cls.__name__}.get_args got {key}={value!r}: did you mean {close[0]}?")
                print_rank0(f"{cls.__name__}.get_args: {key} is not a model argument; set anyway.", level="DEBUG")
            setattr(args, key, value)
        return args

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        name: str,
        args: argparse.Namespace | None = None,
        *,
        home_path: str | None = None,
        url: str | None = None,
        prefix: str = "",
        build_only: bool = False,
        use_node_group: bool = True,
        overwrite_args: dict | None = None,
        dtype: torch.dtype | str | None = None,
        device_map: str | dict | None = None,
        max_memory: dict | None = None,
        offload_folder: str | None = None,
        **kwargs,
    ) -> tuple[BaseModel, argparse.Namespace]:
        """Build this class from a checkpoint directory or a ``MODEL_URLS`` name and load it.

        Args:
            name: a directory holding ``model_config.json`` and ``latest``, or a pretrained name.
            args: arguments to start from; the checkpoint's ``model_config.json`` overrides them.
                ``None`` uses this class's defaults.
            home_path: where downloads go (default ``$SAT_HOME``, else ``~/.sat_models``).
            url: download from here instead of ``MODEL_URLS[name]``.
            prefix: load only checkpoint keys starting with it, stripped (e.g. ``"encoder."``).
            build_only: build with the checkpoint's configuration but load no weights.
            overwrite_args: values that override ``model_config.json``.
            dtype: the parameters' dtype: ``None`` follows ``args.fp16``/``args.bf16`` (else float32),
                ``"auto"`` keeps the checkpoint's, a ``torch.dtype`` (or ``"bf16"``...) converts tensor
                by tensor while loading; ``args.fp16``/``args.bf16`` are set to match.
            device_map: ``"auto"``, ``"balanced"``, ``"sequential"`` or ``{module prefix: GPU index,
                "cpu" or "disk"}``: spread the layers over devices (``model.device_map`` records it;
                see docs/big_models.md).
            max_memory: per-device caps for ``device_map``, e.g. ``{0: "20GiB", "cpu": "60GiB"}``.
            offload_folder: where layers placed on ``"disk"`` are memory-mapped from.
            kwargs: passed to the model constructor; ``specific_iteration`` picks a checkpoint.
        Returns:
            ``(model, args)``.
        """
        return load_pretrained(
            cls,
            name,
            args,
            home_path=home_path,
            url=url,
            prefix=prefix,
            build_only=build_only,
            use_node_group=use_node_group,
            overwrite_args=overwrite_args,
            dtype=dtype,
            device_map=device_map,
            max_memory=max_memory,
            offload_folder=offload_folder,
            **kwargs,
        )

    from_pretrained_base = from_pretrained


# AutoModel lived here in the original library; it is above the zoo now (sat.model.auto).
__getattr__ = moved_names(__name__, {"AutoModel": "sat.model.auto"})
