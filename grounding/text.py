"""Text side of Grounding DINO outside the network: prompt normalisation, BERT tokenisation, chunking.

A prompt is a list of phrases ("cat . remote control ."). The model reads at most 256 tokens per call
([CLS] phrase . phrase . ... [SEP]), so longer prompts are split at phrase boundaries into chunks that each
fit, and the detector runs the text part once per chunk (never truncating silently, unlike the reference
code). Every chunk is tokenised here into a `TokenizedCaption` that remembers which phrase and which word of
the prompt each token came from, so labels are built from the user's own words (no "##" pieces).

Normalisation (the reference lower-cases, strips and appends "."): lower case, control/format characters
removed, whitespace runs collapsed, phrases split at "." and stripped, empty and repeated phrases dropped,
then joined as "a . b ." -- BERT splits punctuation anyway, so "a cat. a dog." gives the same ids.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

from transformers import BertTokenizer

from grounding.errors import InvalidPromptError

VOCAB_PATH = Path(__file__).resolve().parent.parent / "assets" / "vocab.txt"

CLS_ID = 101  # [CLS]
SEP_ID = 102  # [SEP]
DOT_ID = 1012  # "." closes a phrase
PHRASE_SEPARATOR_IDS = frozenset({CLS_ID, SEP_ID, DOT_ID})

MAX_TOKENS = 256  # the model's text length (logits are padded to this width)
MAX_PROMPT_CHARS = 32_768  # LVIS' 1203 class names take about 18k characters
MAX_CHUNKS = 32  # each chunk costs one text + transformer pass of the model


@dataclass(frozen=True)
class TokenizedCaption:
    """One model call's worth of text and where each token came from.

    `input_ids` is exactly what `tokenizer(caption)["input_ids"]` gives. Token i belongs to phrase
    `token_phrase[i]` (-1 for [CLS], "." and [SEP]) and to word `token_word[i]` of that phrase
    (`phrase_words[p]` are the phrase's whitespace-separated words as the user wrote them).
    """

    caption: str  # "cat . remote control ."
    phrases: tuple[str, ...]  # ("cat", "remote control")
    input_ids: tuple[int, ...]  # [T] (101, 4937, 1012, 6556, 2491, 1012, 102)
    phrase_spans: tuple[tuple[int, int], ...]  # token [start, end) per phrase, "." excluded: ((1, 2), (3, 5))
    phrase_words: tuple[tuple[str, ...], ...]  # (("cat",), ("remote", "control"))
    token_phrase: tuple[int, ...]  # [T] (-1, 0, -1, 1, 1, -1, -1)
    token_word: tuple[int, ...]  # [T] (-1, 0, -1, 0, 1, -1, -1)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class _Phrase:
    """A prompt phrase while chunking: its words and their token ids."""

    text: str
    words: tuple[str, ...]
    word_ids: list[list[int]]  # token ids of each word

    @property
    def num_tokens(self) -> int:
        return sum(len(ids) for ids in self.word_ids)


def load_tokenizer(path: str | Path | None = None) -> BertTokenizer:
    """BERT uncased WordPiece tokenizer from a vocab.txt (default: the shipped bert-base-uncased vocab).

    Uses `BertTokenizer(vocab=...)`: in transformers 5, `vocab_file=` is silently ignored and yields a
    5-token vocabulary, so the size is checked against the file. Plain calls (no padding / truncation), as
    made here, may share one instance across threads; a call with padding or truncation changes the shared
    Rust tokenizer's state while it runs, so such callers need their own instance.
    """
    vocab_path = Path(path) if path is not None else VOCAB_PATH
    if not vocab_path.is_file():
        raise FileNotFoundError(f"tokenizer vocabulary not found: {vocab_path}")
    num_lines = sum(1 for _ in vocab_path.open(encoding="utf-8"))
    tokenizer = BertTokenizer(vocab=str(vocab_path), do_lower_case=True)
    if tokenizer.vocab_size != num_lines:
        raise RuntimeError(f"tokenizer read {tokenizer.vocab_size} tokens from {vocab_path}, expected {num_lines}")
    expected = {"[CLS]": CLS_ID, "[SEP]": SEP_ID, ".": DOT_ID}
    actual = {token: tokenizer.convert_tokens_to_ids(token) for token in expected}
    if actual != expected:
        raise RuntimeError(f"{vocab_path} is not a bert-base-uncased vocabulary: special ids {actual}")
    return tokenizer


def _clean(text: str) -> str:
    """Lower case, drop control/format characters, collapse whitespace."""
    kept = (ch if not unicodedata.category(ch).startswith("C") else " " for ch in text.lower())
    return " ".join("".join(kept).split())


def split_phrases(prompt: str | list[str] | tuple[str, ...]) -> list[str]:
    """The prompt's phrases, cleaned, in order, each once.

    A string is split at "."; a list holds one class name per item (a "." inside a name becomes a space,
    since the model would read it as a phrase end). May return an empty list ("", " . . ").
    """
    if isinstance(prompt, str):
        raw_phrases = prompt.split(".")
        size = len(prompt)
    elif isinstance(prompt, (list, tuple)) and all(isinstance(item, str) for item in prompt):
        raw_phrases = [item.replace(".", " ") for item in prompt]
        size = sum(len(item) + 3 for item in prompt)
    else:
        raise InvalidPromptError(
            f"the prompt must be a string like 'cat . remote control .' or a list of class names, "
            f"got {type(prompt).__name__}"
        )
    if size > MAX_PROMPT_CHARS:
        raise InvalidPromptError(
            f"the prompt has {size} characters; at most {MAX_PROMPT_CHARS} are accepted. Use fewer classes."
        )
    return list(dict.fromkeys(phrase for phrase in map(_clean, raw_phrases) if phrase))  # ordered, unique


def normalize_caption(prompt: str | list[str] | tuple[str, ...]) -> str:
    """"Cat . Dog" or ["Cat", "Dog"] -> "cat . dog .". Raises InvalidPromptError if no phrase is left."""
    phrases = split_phrases(prompt)
    if not phrases:
        raise InvalidPromptError(
            "the prompt has no words: write the things to find separated by '.', e.g. 'cat . remote control .'"
        )
    return " . ".join(phrases) + " ."


def tokenize_caption(
    prompt: str | list[str] | tuple[str, ...], tokenizer: BertTokenizer, max_tokens: int = MAX_TOKENS
) -> list[TokenizedCaption]:
    """Normalise, tokenise and split a prompt into chunks of at most `max_tokens` tokens.

    Chunks break only between phrases and keep the prompt's order; every phrase lands in exactly one chunk.
    A phrase that cannot fit a chunk on its own ([CLS] phrase . [SEP] > max_tokens) raises
    InvalidPromptError; so do prompts with no readable word and prompts needing more than MAX_CHUNKS chunks.
    """
    phrases = split_phrases(prompt)
    words_per_phrase = [phrase.split(" ") for phrase in phrases]
    flat_words = [word for words in words_per_phrase for word in words]
    flat_ids = tokenizer(flat_words, add_special_tokens=False)["input_ids"] if flat_words else []

    # Per phrase: its words that produce tokens (a lone combining accent produces none) and their ids.
    tokenized_phrases: dict[str, _Phrase] = {}  # ordered, unique
    cursor = 0
    for words in words_per_phrase:
        kept_words, kept_ids = [], []
        for word in words:
            ids = flat_ids[cursor]
            cursor += 1
            if ids:
                kept_words.append(word)
                kept_ids.append(ids)
        if kept_words:
            text = " ".join(kept_words)
            tokenized_phrases.setdefault(text, _Phrase(text, tuple(kept_words), kept_ids))
    if not tokenized_phrases:
        raise InvalidPromptError(
            "the prompt has no words: write the things to find separated by '.', e.g. 'cat . remote control .'"
        )

    budget = max_tokens - 2  # [CLS] and [SEP]
    groups: list[list[_Phrase]] = [[]]
    used = 0
    for phrase in tokenized_phrases.values():
        cost = phrase.num_tokens + 1  # + its "."
        if cost > budget:
            excerpt = phrase.text if len(phrase.text) <= 60 else phrase.text[:57] + "..."
            raise InvalidPromptError(
                f"the phrase '{excerpt}' is {phrase.num_tokens} tokens long; one phrase may have at most "
                f"{budget - 1} tokens. Shorten it or split it with '.'."
            )
        if used + cost > budget:
            groups.append([])
            used = 0
        groups[-1].append(phrase)
        used += cost
    if len(groups) > MAX_CHUNKS:
        raise InvalidPromptError(
            f"the prompt needs {len(groups)} model passes of {max_tokens} tokens; at most {MAX_CHUNKS} are "
            "accepted. Use fewer classes."
        )
    return [_assemble(group) for group in groups]


def _assemble(group: list[_Phrase]) -> TokenizedCaption:
    """[CLS] phrase . phrase . [SEP] with each token's phrase and word index."""
    input_ids, token_phrase, token_word, spans = [CLS_ID], [-1], [-1], []
    for phrase_index, phrase in enumerate(group):
        start = len(input_ids)
        for word_index, ids in enumerate(phrase.word_ids):
            input_ids += ids
            token_phrase += [phrase_index] * len(ids)
            token_word += [word_index] * len(ids)
        spans.append((start, len(input_ids)))
        input_ids.append(DOT_ID)
        token_phrase.append(-1)
        token_word.append(-1)
    input_ids.append(SEP_ID)
    token_phrase.append(-1)
    token_word.append(-1)
    phrases = tuple(phrase.text for phrase in group)
    return TokenizedCaption(
        caption=" . ".join(phrases) + " .",
        phrases=phrases,
        input_ids=tuple(input_ids),
        phrase_spans=tuple(spans),
        phrase_words=tuple(phrase.words for phrase in group),
        token_phrase=tuple(token_phrase),
        token_word=tuple(token_word),
    )


def chunk_caption(
    prompt: str | list[str] | tuple[str, ...], tokenizer: BertTokenizer, max_tokens: int = MAX_TOKENS
) -> list[str]:
    """The normalised captions of `tokenize_caption`'s chunks ("cat . dog ." ...)."""
    return [chunk.caption for chunk in tokenize_caption(prompt, tokenizer, max_tokens)]
