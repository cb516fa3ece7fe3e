"""Prompt normalisation, phrase splitting, chunking and bad input on the shipped vocabulary."""
import pytest

from grounding.errors import InvalidPromptError
from grounding.text import (
    CLS_ID,
    DOT_ID,
    MAX_PROMPT_CHARS,
    SEP_ID,
    chunk_caption,
    normalize_caption,
    split_phrases,
    tokenize_caption,
)


@pytest.mark.parametrize(
    "prompt, caption",
    [
        ("Cat . Dog", "cat . dog ."),
        ("  a cat. a remote control.  ", "a cat . a remote control ."),
        (["A cat", "Remote  Control "], "a cat . remote control ."),
        ("cat .. dog . . cat", "cat . dog ."),  # empty and repeated phrases dropped
        ("cat\n\tdog . bird", "cat dog . bird ."),
        (["st. bernard", "dog"], "st bernard . dog ."),  # a '.' inside a class name would end the phrase
        ("Café . 北京", "café . 北京 ."),
    ],
)
def test_normalize_caption(prompt, caption):
    assert normalize_caption(prompt) == caption


def test_split_phrases():
    assert split_phrases("a cat. a remote control.") == ["a cat", "a remote control"]
    assert split_phrases(" . . ") == []


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t", ".", " . . ...", [], ["", " . "], "\x00\x07 ."])
def test_prompt_without_words_is_a_typed_error(tokenizer, prompt):
    with pytest.raises(InvalidPromptError, match="no words"):
        tokenize_caption(prompt, tokenizer)
    with pytest.raises(InvalidPromptError):
        normalize_caption(prompt)


@pytest.mark.parametrize("prompt", [None, 3, b"cat", ["cat", 3]])
def test_prompt_of_wrong_type_is_a_typed_error(tokenizer, prompt):
    with pytest.raises(InvalidPromptError, match="must be a string"):
        tokenize_caption(prompt, tokenizer)


def test_prompt_of_100_kb_is_refused_quickly(tokenizer):
    with pytest.raises(InvalidPromptError, match=f"at most {MAX_PROMPT_CHARS}"):
        tokenize_caption("cat . " * 20_000, tokenizer)
    with pytest.raises(InvalidPromptError, match="characters"):
        tokenize_caption(["x" * 1000] * 100, tokenizer)


def test_non_ascii_prompt_has_a_defined_result(tokenizer):
    (chunk,) = tokenize_caption("Café . naïve . 北京 . 😀 . t-shirt", tokenizer)
    assert chunk.phrases == ("café", "naïve", "北京", "😀", "t-shirt")
    assert list(chunk.input_ids) == tokenizer(chunk.caption)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(list(chunk.input_ids))
    assert tokens == ["[CLS]", "cafe", ".", "naive", ".", "北", "京", ".", "[UNK]", ".", "t", "-", "shirt", ".", "[SEP]"]
    # Words that produce no token at all (a lone combining accent) are dropped, not sent as empty phrases.
    (only_dog,) = tokenize_caption("\u0301 . dog", tokenizer)
    assert only_dog.phrases == ("dog",)


def test_tokenized_caption_maps_tokens_to_phrases_and_words(tokenizer):
    (chunk,) = tokenize_caption("a cat . a remote control . glassoil", tokenizer)
    assert chunk.input_ids == (101, 1037, 4937, 1012, 1037, 6556, 2491, 1012, 3221, 10448, 2140, 1012, 102)
    assert chunk.phrases == ("a cat", "a remote control", "glassoil")
    assert chunk.phrase_spans == ((1, 3), (4, 7), (8, 11))
    assert chunk.phrase_words == (("a", "cat"), ("a", "remote", "control"), ("glassoil",))
    assert chunk.token_phrase == (-1, 0, 0, -1, 1, 1, 1, -1, 2, 2, 2, -1, -1)
    assert chunk.token_word == (-1, 0, 1, -1, 0, 1, 2, -1, 0, 0, 0, -1, -1)
    assert list(chunk.input_ids) == tokenizer(chunk.caption)["input_ids"]


def test_300_class_prompt_is_chunked_at_phrase_boundaries(tokenizer):
    classes = [f"object kind {i} of tableware" for i in range(300)]
    chunks = tokenize_caption(classes, tokenizer)
    assert len(chunks) > 1
    assert [phrase for chunk in chunks for phrase in chunk.phrases] == classes  # each once, in order
    for chunk in chunks:
        assert len(chunk) <= 256
        assert chunk.input_ids[0] == CLS_ID and chunk.input_ids[-1] == SEP_ID and chunk.input_ids[-2] == DOT_ID
        assert list(chunk.input_ids) == tokenizer(chunk.caption)["input_ids"]
    # Greedy packing: no chunk could have taken the next chunk's first phrase.
    for chunk, following in zip(chunks, chunks[1:]):
        first = following.phrase_spans[0]
        assert len(chunk) + (first[1] - first[0]) + 1 > 256
    assert chunk_caption(classes, tokenizer) == [chunk.caption for chunk in chunks]


def test_chunk_limit_is_exact(tokenizer):
    # [CLS] + 253 tokens + "." + [SEP] = 256 fits; one token more does not fit any chunk.
    fits = " ".join(["cat"] * 253)
    (chunk,) = tokenize_caption(fits, tokenizer)
    assert len(chunk) == 256
    with pytest.raises(InvalidPromptError, match="254 tokens long"):
        tokenize_caption(fits + " dog . bird", tokenizer)
    chunks = tokenize_caption([fits, "dog"], tokenizer)
    assert [c.phrases for c in chunks] == [(fits,), ("dog",)]
    small = tokenize_caption(["cat", "dog", "bird"], tokenizer, max_tokens=6)
    assert [c.caption for c in small] == ["cat . dog .", "bird ."]


def test_too_many_chunks_is_refused(tokenizer):
    # Each CJK character is one token: ~1000 phrases of 9 tokens stay under the character limit.
    classes = [" ".join(chr(0x4E00 + (i * 7 + k) % 20000) for k in range(8)) + f" {i}" for i in range(1000)]
    assert sum(len(c) + 3 for c in classes) < MAX_PROMPT_CHARS
    with pytest.raises(InvalidPromptError, match="model passes"):
        tokenize_caption(classes, tokenizer)


@pytest.mark.parametrize("prompt", ["Cat . Dog", ["st. bernard", "A  dog"], "café . 北京 .. x", "a cat. a remote control."])
def test_normalisation_is_idempotent(tokenizer, prompt):
    caption = normalize_caption(prompt)
    assert normalize_caption(caption) == caption
    assert tokenize_caption(caption, tokenizer) == tokenize_caption(prompt, tokenizer)


def test_concurrent_tokenisation_gives_the_same_result(tokenizer):
    """The app tokenises from several request threads with one shared tokenizer."""
    import threading

    classes = [f"object kind {i} of tableware" for i in range(300)]
    expected = tokenize_caption(classes, tokenizer)
    failures = []

    def work():
        for _ in range(5):
            if tokenize_caption(classes, tokenizer) != expected:
                failures.append("different chunks")
            if tokenizer("a cat .")["input_ids"] != [101, 1037, 4937, 1012, 102]:
                failures.append("different ids")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_special_token_names_in_a_prompt_are_plain_text(tokenizer):
    (chunk,) = tokenize_caption("[CLS] . [SEP] . [PAD] x . what is this?", tokenizer)
    assert chunk.phrases == ("[cls]", "[sep]", "[pad] x", "what is this?")
    inner = [i for p in range(len(chunk.phrases)) for i in chunk.input_ids[slice(*chunk.phrase_spans[p])]]
    assert not {0, 101, 102, 1012} & set(inner)
    assert list(chunk.input_ids) == tokenizer(chunk.caption)["input_ids"]
