"""Collecting a model's hooks from its class and its mixins.

For each hook name, in registry order: a method of the model's own class comes first (as if it
were a mixin added before all others), then each mixin in the order it was added:

- a ``@non_conflict`` hook wraps what came before: it is called with ``old_impl=<previous>``
  (the default implementation when nothing came before);
- otherwise it replaces what came before, which is allowed only over nothing or over a hook
  marked ``@replacable``; anything else is a conflict, reported with both owners' names.

The result is a chain per hook, ``default -> replacable* -> non_conflict*``, recorded so that
``model.describe_hooks()`` can show who does what.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from sat.model.hook_specs import HOOK_SPECS, HookSpec


class HookError(ValueError):
    """A hook that cannot be installed: a conflict, or a signature the backbone cannot call."""


def non_conflict(func: Callable) -> Callable:
    """Mark a hook as a wrapper: it receives the previous implementation as ``old_impl`` and
    composes with any hooks added before it (e.g. prefix tuning's ``attention_fn``)."""
    func.non_conflict = True
    return func


def replacable(func: Callable) -> Callable:
    """Mark a hook as replaceable by a mixin added after it (with a warning)."""
    func.replacable = True
    return func


@dataclass(frozen=True)
class HookLink:
    """One step of a hook's chain: who provides it and how."""

    origin: str  # "model", a mixin name, or "default"
    owner: str  # qualified name of the method, for messages
    wraps: bool  # True for @non_conflict hooks, which call the next link

    def describe(self) -> str:
        if self.origin == "default":
            return "default"
        return f"{self.origin} ({self.owner}{', wraps' if self.wraps else ''})"


@dataclass
class CollectedHooks:
    hooks: dict[str, Callable]
    chains: dict[str, list[HookLink]]  # outermost first

    @property
    def origins(self) -> dict[str, str]:
        """The original library's ``hook_origins``: ``"prefix -> auto-regressive -> default"``."""
        return {name: " -> ".join(link.origin for link in chain) for name, chain in self.chains.items()}


def _own_hook(obj, name: str, base: type) -> Callable | None:
    """``obj``'s method ``name`` if a subclass of ``base`` (or the instance) defines it."""
    if name in vars(obj):
        return vars(obj)[name]
    if getattr(type(obj), name, None) is None or hasattr(base, name):
        return None
    return getattr(obj, name)


def _qualname(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def check_hook_signature(fn: Callable, spec: HookSpec, where: str, wraps: bool) -> None:
    """Raise HookError if the backbone's call of hook ``spec`` cannot bind to ``fn``."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins and C functions have no inspectable signature
        return
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    has_varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    has_varkw = any(p.kind is p.VAR_KEYWORD for p in params)
    keyword_names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    count = len(spec.positional)

    problems = []
    if len(positional) < count and not has_varargs:
        problems.append(
            f"it takes {len(positional)} positional argument(s) but the backbone passes {count} "
            f"({', '.join(spec.positional)})" + ("; did you forget `self`?" if spec.takes_self else "")
        )
    filled = {p.name for p in positional[:count]}
    for p in positional[count:]:
        if p.kind is p.POSITIONAL_ONLY and p.default is p.empty:
            problems.append(f"positional-only parameter {p.name!r} is never passed")
    positional_only = {p.name for p in params if p.kind is p.POSITIONAL_ONLY}
    for keyword in spec.keywords:
        if keyword in filled or keyword in positional_only:
            problems.append(f"{keyword!r} sits in a positional slot, but the backbone passes it by keyword")
        elif keyword not in keyword_names and not has_varkw:
            problems.append(f"it does not accept the keyword {keyword!r} (add **kw_args)")
    if wraps and "old_impl" not in signature.parameters:
        problems.append("it is marked @non_conflict but has no `old_impl` parameter")
    elif wraps and ("old_impl" in filled or "old_impl" in positional_only):
        problems.append("`old_impl` sits in a positional slot, but it is passed by keyword")
    if problems:
        raise HookError(
            f"Hook {spec.name} at {where}: {'; '.join(problems)}. Its signature is {fn.__name__}{signature}; "
            f"the backbone calls {spec.signature}."
        )


def _one_edit_apart(a: str, b: str) -> bool:
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    return a[i + (len(a) == len(b)) :] == b[i + 1 :]


def warn_near_miss_names(obj, base: type, where: str) -> None:
    """Warn about methods named almost like a hook: a typo would silently never run."""
    for attr in dir(type(obj)):
        if attr.startswith("_") or attr in HOOK_SPECS or hasattr(base, attr):
            continue
        for hook in HOOK_SPECS:
            if _one_edit_apart(attr, hook) or attr == f"{hook}_default":
                warnings.warn(
                    f"{where} defines {attr!r}, which is not a hook and will never be called by the "
                    f"backbone. Did you mean {hook!r}?",
                    stacklevel=4,
                )


def collect_hooks(model, model_base: type, mixin_base: type) -> CollectedHooks:
    """Build the hook table of ``model`` from its class (methods not on ``model_base``) and
    its mixins (methods not on ``mixin_base``), checking every hook's signature."""
    hooks: dict[str, Callable] = {}
    chains: dict[str, list[HookLink]] = {}
    providers = [("model", model, model_base, f"model {type(model).__name__}")]
    providers += [
        (name, mixin, mixin_base, f"mixin {name!r} ({type(mixin).__name__})") for name, mixin in model.mixins.items()
    ]
    for spec in HOOK_SPECS.values():
        for origin, provider, base, where in providers:
            fn = _own_hook(provider, spec.name, base)
            if fn is None:
                continue
            wraps = getattr(fn, "non_conflict", False)
            check_hook_signature(fn, spec, where, wraps)
            link = HookLink(origin, _qualname(fn), wraps)
            if wraps:
                previous = hooks.get(spec.name)
                if previous is None:
                    previous = spec.default if not spec.takes_self else partial(spec.default, model)
                    chains[spec.name] = [HookLink("default", "default", False)]
                hooks[spec.name] = partial(fn, old_impl=previous)
                chains[spec.name].insert(0, link)
            elif spec.name in hooks and not getattr(hooks[spec.name], "replacable", False):
                holder = chains[spec.name][0]
                raise HookError(
                    f"Hook {spec.name} conflicts at {where} and {holder.describe()}: both define it. Mark the "
                    f"later one @non_conflict (it then wraps the earlier one through old_impl), mark the "
                    f"earlier one @replacable, or del_mixin one of them."
                )
            else:
                if spec.name in hooks:
                    warnings.warn(
                        f"Hook {spec.name} at {where} replaces {chains[spec.name][0].describe()}.",
                        stacklevel=3,
                    )
                hooks[spec.name] = fn
                chains[spec.name] = [link]
    for _, provider, base, where in providers:
        warn_near_miss_names(provider, base, where)
    return CollectedHooks(hooks, chains)


def describe_chains(chains: dict[str, list[HookLink]]) -> str:
    """One line per hook: the chain from the outermost implementation to the innermost."""
    width = max(len(name) for name in HOOK_SPECS)
    lines = []
    for name in HOOK_SPECS:
        chain = chains.get(name) or [HookLink("default", "default", False)]
        lines.append(f"{name.ljust(width)}  {' -> '.join(link.describe() for link in chain)}")
    return "\n".join(lines)
