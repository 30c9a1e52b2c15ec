"""The documentation site's generated parts (scripts/docs_site.py; `make docs` builds the site with
--strict): the hook reference comes from the registry, and every public class and function of the
compatibility contract has a reference entry with a docstring."""

from __future__ import annotations

import os
import sys

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import docs_site  # noqa: E402

from sat.model.hook_specs import HOOK_SPECS  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_hook_reference_lists_every_hook_with_its_registry_signature():
    page = docs_site.hook_reference()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert len(HOOK_SPECS) == 9 and len(rows) == 9
    for row, spec in zip(rows, HOOK_SPECS.values(), strict=True):
        assert row.startswith(f"| `{spec.name}` | `{spec.signature}` |")


def test_every_public_class_and_function_has_a_docstring_and_one_rendered_entry():
    modules = docs_site.public_entries()
    assert docs_site.missing_docstrings(modules) == []
    first_page: dict[str, str] = {}
    pages = {name: docs_site.api_page(name, entries, first_page) for name, entries in modules.items()}
    rendered = [line for page in pages.values() for line in page.splitlines() if line.startswith("::: ")]
    documented = {e.defining_path for entries in modules.values() for e in entries if e.documented}
    assert sorted(line[4:] for line in rendered) == sorted(documented)  # each object once
    for name in ("training_main", "AutoModel", "filling_sequence", "BaseStrategy", "LoraMixin", "save_hf"):
        assert any(line.endswith(f".{name}") for line in rendered), name
    # Every class of the zoo is in the reference.
    from sat.model import official

    assert {f"sat.model.official.{name}" for name in official.__all__} <= {
        e.public_path for e in modules["sat.model.official"]
    }


def test_a_missing_docstring_is_found():
    def undocumented():
        pass

    entry = docs_site.Entry("sat.undocumented", undocumented)
    assert docs_site.missing_docstrings({"sat": [entry]}) == ["sat.undocumented"]


def test_every_written_page_is_in_the_navigation():
    with open(os.path.join(ROOT, "mkdocs.yml")) as f:
        config = yaml.load(f, Loader=yaml.BaseLoader)  # BaseLoader: the !! tags of plugins stay text

    def pages(nav):
        for item in nav:
            for value in item.values() if isinstance(item, dict) else [item]:
                yield from pages(value) if isinstance(value, list) else [value]

    listed = set(pages(config["nav"]))
    docs = os.path.join(ROOT, "docs")
    written = {
        os.path.relpath(os.path.join(root, name), docs)
        for root, _, names in os.walk(docs)
        for name in names
        if name.endswith(".md")
    }
    assert written - listed == set()
