"""``sat list-models``: the pretrained names ``from_pretrained`` and ``sat download`` know
(``sat.resources.MODEL_URLS``) and the model classes registered for ``AutoModel``."""

from __future__ import annotations

import argparse
import json

from sat.tools.cli.common import add_command, add_import_option, import_modules


def register(subparsers) -> None:
    """Add ``list-models`` to ``subparsers``."""
    parser = add_command(subparsers, "list-models", run, "pretrained names and registered model classes", __doc__)
    parser.add_argument("--json", action="store_true", help='print {"pretrained": [...], "classes": [...]}')
    add_import_option(parser)


def run(options: argparse.Namespace) -> None:
    """Print both lists."""
    import sat.model.official  # noqa: F401  (the zoo's classes register themselves)
    from sat.helpers import print_columns
    from sat.model.registry import model_registry
    from sat.resources import MODEL_URLS

    import_modules(options.imports)
    pretrained, classes = list(MODEL_URLS), sorted(model_registry.member)
    if options.json:
        print(json.dumps({"pretrained": pretrained, "classes": classes}, indent=2))
        return
    print("pretrained models (sat download NAME):")
    print_columns(pretrained)
    print("registered model classes (model_class in model_config.json):")
    print_columns(classes)
