"""How people write a thing to find: "a purple ring", "the purple ring .", "purple rings", "small bright purple ring",
"find the purple ring", "Purple Ring!". Training captions and the prompt evaluation draw phrases from here.

`natural_phrase` returns the written phrase and its core (the "colour shape" words, plural where written so): the
detector is taught to find the object from the core's tokens, so articles, adjectives and verbs stay neutral.
"""
from __future__ import annotations

import numpy as np

ADJECTIVES = ("small", "big", "large", "little", "bright", "tiny")
SENTENCES = ("find the {}", "show me the {}", "where is the {}", "look for the {}", "detect the {}", "the {} in the picture",
             "can you find the {}")
PLURAL_SENTENCES = ("find all the {}", "show me the {}", "where are the {}", "all {}", "detect every one of the {}")
PUNCTUATION = ("!", "?", ",", ";", ":")
# Common object words (COCO-like) that name nothing in a shapes scene: negatives that must give no box.
UNRELATED = (
    "dog", "cat", "car", "chair", "person", "tree", "house", "bottle", "cup", "phone", "table", "bird", "horse", "book",
    "laptop", "bicycle", "boat", "clock", "apple", "banana", "shoe", "bag", "window", "door", "flower", "fish", "kite",
    "umbrella", "pizza", "train", "bus", "truck", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "bench",
    "bowl", "knife", "spoon", "sofa", "bed", "television", "keyboard", "mouse", "vase", "teddy bear", "toothbrush",
    "man", "woman", "child", "road", "sky", "grass", "building", "lamp", "pen", "ball",
)
IRREGULAR_PLURALS = {"person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice",
                     "knife": "knives", "fish": "fish", "sheep": "sheep", "bus": "buses", "sky": "skies"}
STYLES = ("plain", "article", "the_dot", "plural", "adjective", "sentence")


def article(words: str) -> str:
    return "an" if words[0] in "aeiou" else "a"


def plural(name: str) -> str:
    """"red circle" -> "red circles" (the shapes' nouns and the unrelated words all take an s, but for a few)."""
    head, _, last = name.rpartition(" ")
    last = IRREGULAR_PLURALS.get(last, last + "s")
    return f"{head} {last}" if head else last


def written(name: str, style: str, rng: np.random.Generator) -> tuple[str, str]:
    """`name` written in `style` (one of STYLES): (phrase, core)."""
    if style == "plain":
        return name, name
    if style == "article":
        return f"{article(name)} {name}", name
    if style == "the_dot":
        return f"the {name}", name
    if style == "plural":
        many = plural(name)
        return many, many
    if style == "adjective":
        chosen = [str(word) for word in rng.choice(ADJECTIVES, size=int(rng.integers(1, 3)), replace=False)]
        return " ".join(chosen + [name]), name
    if style == "sentence":
        return str(rng.choice(SENTENCES)).format(name), name
    raise ValueError(f"style must be one of {STYLES}, not {style!r}")


def natural_phrase(name: str, rng: np.random.Generator) -> tuple[str, str]:
    """`name` as a person might type it: a random style, sometimes with an article or adjective before a plural,
    upper or title case, or trailing punctuation. (phrase, core)"""
    style = str(rng.choice(STYLES))
    phrase, core = written(name, style, rng)
    if style == "plural" and rng.random() < 0.4:
        phrase = str(rng.choice(PLURAL_SENTENCES + ("the {}", "small {}", "bright {}"))).format(core)
    if rng.random() < 0.2:
        phrase = phrase.upper() if rng.random() < 0.5 else phrase.title()
    if rng.random() < 0.2:
        phrase += str(rng.choice(PUNCTUATION))
    return phrase, core


def unrelated_phrase(rng: np.random.Generator) -> str:
    """An object word that names nothing in the scene, written as a person might."""
    phrase, _ = natural_phrase(str(rng.choice(UNRELATED)), rng)
    return phrase
