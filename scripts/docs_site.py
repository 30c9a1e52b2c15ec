"""MkDocs hooks for the documentation site (``mkdocs.yml``: ``hooks``; ``make docs``).

The API reference and the hook reference are generated at build time from the code, so they
cannot drift: ``reference/api/*.md`` from ``PUBLIC_API`` (the public paths of the compatibility
contract, DESIGN §1, plus ``sat.hf``), one ``:::`` entry per class and function, documented once
at its defining path and listed under every public path that exports it;
``reference/hooks.md`` from ``sat.model.hook_specs.HOOK_SPECS``. A public class or function
without a docstring is a warning, which ``mkdocs build --strict`` turns into a failure.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from dataclasses import dataclass

log = logging.getLogger("mkdocs.hooks.sat_docs")  # under "mkdocs": --strict counts its warnings

# Public module -> the names it exports (None: its ``__all__``), in the order pages appear.
PUBLIC_API: dict[str, list[str] | None] = {
    "sat": ["get_args", "get_tokenizer", "AutoModel", "training_main", "update_args_with_file"],
    "sat.model": ["BaseModel", "BaseMixin", "AutoModel", "BaseTransformer", "CachedAutoregressiveModel",
                  "EncoderDecoderModel", "get_model", "list_avail_models", "non_conflict", "replacable"],
    "sat.model.official": None,
    "sat.model.mixins": None,
    "sat.model.finetune": None,
    "sat.model.finetune.lora2": ["LoraMixin", "LoraLinear", "merge_linear_lora"],
    "sat.transformer_defaults": ["HOOKS_DEFAULT", "HOOK_SPECS", "ARGS_DEFAULT", "standard_attention", "HookSpec"],
    "sat.generation.autoregressive_sampling": ["filling_sequence", "stream_filling_sequence", "evaluate_perplexity"],
    "sat.generation.sampling_strategies": ["BaseStrategy", "BeamSearchStrategy"],
    "sat.training.deepspeed_training": ["training_main"],
    "sat.training.model_io": ["save_checkpoint", "load_checkpoint"],
    "sat.arguments": ["get_args", "update_args_with_file", "overwrite_args_by_dict", "set_random_seed",
                      "initialize_distributed"],
    "sat.mpu": None,
    "sat.helpers": ["print_rank0", "print_all"],
    "sat.tokenization": None,
    "sat.resources": None,
    "sat.hf": ["from_hf", "to_hf", "save_hf", "hf_to_sat_state_dict", "sat_to_hf_state_dict", "families"],
}  # fmt: skip


@dataclass
class Entry:
    """One exported name: where users import it from, and the object."""

    public_path: str
    obj: object

    @property
    def documented(self) -> bool:
        """Classes and functions get a rendered entry; data (dicts, constants) a line."""
        return inspect.isclass(self.obj) or inspect.isfunction(self.obj)

    @property
    def defining_path(self) -> str:
        return f"{self.obj.__module__}.{self.obj.__qualname__}" if self.documented else self.public_path


def public_entries() -> dict[str, list[Entry]]:
    """Every module of ``PUBLIC_API`` with its entries."""
    modules = {}
    for module_name, names in PUBLIC_API.items():
        module = importlib.import_module(module_name)
        names = names if names is not None else sorted(module.__all__)
        modules[module_name] = [Entry(f"{module_name}.{name}", getattr(module, name)) for name in names]
    return modules


def missing_docstrings(modules: dict[str, list[Entry]]) -> list[str]:
    """Public classes and functions without a docstring of their own."""
    return sorted({e.public_path for entries in modules.values() for e in entries if e.documented and not _doc(e.obj)})


def _doc(obj) -> str:
    return (obj.__doc__ or "").strip()


def api_page(module_name: str, entries: list[Entry], first_page: dict[str, str]) -> str:
    """The reference page of one public module; ``first_page`` maps a defining path to the page
    that renders it (filled here for this page's new entries)."""
    lines = [f"# `{module_name}`", "", _module_summary(module_name), ""]
    data = [e for e in entries if not e.documented]
    if data:
        lines += ["| Name | Type |", "|---|---|"]
        lines += [f"| `{e.public_path}` | `{type(e.obj).__name__}` |" for e in data]
        lines.append("")
    for entry in (e for e in entries if e.documented):
        home = first_page.get(entry.defining_path)
        if home is None:
            first_page[entry.defining_path] = module_name
            lines += [f"::: {entry.defining_path}", "    options:", f"      heading: {entry.public_path}", ""]
        else:  # an alias (here or on an earlier page): documented once, linked from here
            link = f"#{entry.defining_path}" if home == module_name else f"{home}.md#{entry.defining_path}"
            lines += [f"- `{entry.public_path}`: see [`{entry.defining_path}`]({link})", ""]
    return "\n".join(lines)


def _module_summary(module_name: str) -> str:
    doc = _doc(importlib.import_module(module_name))
    return doc.split("\n\n")[0] if doc else ""


def hook_reference() -> str:
    """The hook reference page: every hook of the registry, its call signature and default."""
    from sat.model.hook_specs import HOOK_SPECS

    lines = [
        "# Hook reference",
        "",
        "Generated from `sat.model.hook_specs.HOOK_SPECS` when the site is built. See",
        "[Hooks and mixins](../hooks.md) for how hooks compose.",
        "",
        "| Hook | Signature | Default |",
        "|---|---|---|",
    ]
    for spec in HOOK_SPECS.values():
        default = " ".join(_doc(spec.default).split("\n\n")[0].split())
        lines.append(f"| `{spec.name}` | `{spec.signature}` | {default} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- MkDocs events
def on_files(files, config):
    """Add the generated reference pages to the site."""
    from mkdocs.structure.files import File

    modules = public_entries()
    for path in missing_docstrings(modules):
        log.warning(f"public API {path} has no docstring")
    first_page: dict[str, str] = {}
    for module_name, entries in modules.items():
        content = api_page(module_name, entries, first_page)
        files.append(File.generated(config, f"reference/api/{module_name}.md", content=content))
    files.append(File.generated(config, "reference/hooks.md", content=hook_reference()))
    return files


def on_config(config):
    """Append the generated pages to the navigation (``mkdocs.yml`` lists the written ones)."""
    api = [{module: f"reference/api/{module}.md"} for module in PUBLIC_API]
    config["nav"].append({"API reference": [{"Hooks": "reference/hooks.md"}, *api]})
    return config
