"""A small sentence-classification data set, generated: which of four topics a sentence is about.

Every sentence is a template filled with a topic's words. The test split draws its words and
templates from lists the training split never sees, so a model scores well on it only by
knowing what the words mean, not by remembering the training sentences.

    python topics.py OUT_DIR    # writes train.tsv, valid.tsv and test.tsv (label<TAB>sentence)
"""

from __future__ import annotations

import os
import random
import sys

LABELS = ["food", "sport", "weather", "computers"]

# Per topic: (words seen in training, words kept for the test split).
WORDS = {
    "food": (
        ["pasta", "soup", "bread", "cheese", "salad", "rice", "cake", "pizza", "noodles", "curry"],
        ["dumplings", "omelette", "porridge", "sushi", "pancakes"],
    ),
    "sport": (
        [
            "football match",
            "tennis final",
            "marathon",
            "basketball game",
            "swimming race",
            "boxing bout",
            "cycling stage",
            "rugby game",
            "golf tournament",
            "relay race",
        ],
        ["hockey game", "volleyball final", "ski jump", "wrestling match", "rowing regatta"],
    ),  # fmt: skip
    "weather": (
        ["rain", "snowstorm", "heatwave", "fog", "thunderstorm", "frost", "drizzle", "hail", "wind", "sunshine"],
        ["blizzard", "monsoon", "sleet", "hurricane", "drought"],
    ),
    "computers": (
        [
            "laptop",
            "keyboard",
            "compiler",
            "database",
            "operating system",
            "graphics card",
            "web server",
            "hard drive",
            "spreadsheet",
            "software update",
        ],
        ["motherboard", "firewall", "processor", "router", "source code"],
    ),  # fmt: skip
}

TEMPLATES = (
    ["I can't stop thinking about the {}.", "Everyone was talking about the {} yesterday.",
     "The news this morning was all about the {}.", "We spent the whole evening on the {}.",
     "My brother has strong opinions about the {}.", "Nobody expected the {} to be like that."],
    ["Have you heard about the {}?", "The {} was the main topic at lunch."],
)  # fmt: skip


def sentences(split: str, count: int, seed: int) -> list[tuple[int, str]]:
    """``count`` (label, sentence) pairs of ``split``: ``train``/``valid`` from the training words
    and templates, ``test`` from the held-out ones."""
    rng = random.Random(f"{split}-{seed}")
    held_out = split == "test"
    pairs = []
    for i in range(count):
        label = i % len(LABELS)
        word = rng.choice(WORDS[LABELS[label]][held_out])
        pairs.append((label, rng.choice(TEMPLATES[held_out]).format(word)))
    rng.shuffle(pairs)
    return pairs


def write_splits(out_dir: str, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, str]:
    """Write ``<split>.tsv`` files (a header, then ``label<TAB>sentence``); returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for split, count in (sizes or {"train": 512, "valid": 64, "test": 200}).items():
        paths[split] = os.path.join(out_dir, f"{split}.tsv")
        with open(paths[split], "w", encoding="utf-8") as f:
            f.write("label\tsentence\n")
            f.writelines(f"{label}\t{text}\n" for label, text in sentences(split, count, seed))
    return paths


if __name__ == "__main__":
    print(write_splits(sys.argv[1]))
