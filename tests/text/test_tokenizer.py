"""The shipped vocab.txt gives bert-base-uncased ids offline."""
import hashlib

import pytest
from transformers import BertTokenizer

from grounding.text import VOCAB_PATH, load_tokenizer

VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"


def test_vocab_file_is_bert_base_uncased():
    data = VOCAB_PATH.read_bytes()
    assert hashlib.sha256(data).hexdigest() == VOCAB_SHA256
    assert data.count(b"\n") == 30522
    assert (VOCAB_PATH.parent / "LICENSE-vocab.txt").read_text().count("Apache License, Version 2.0") >= 1


def test_real_words_get_real_ids(tokenizer):
    assert tokenizer.vocab_size == 30522
    ids = tokenizer("a cat . a remote control .")["input_ids"]
    assert ids == [101, 1037, 4937, 1012, 1037, 6556, 2491, 1012, 102]
    assert tokenizer("A Cat. a remote control.")["input_ids"] == ids  # uncased, punctuation split
    assert tokenizer.convert_ids_to_tokens(tokenizer("glassoil", add_special_tokens=False)["input_ids"]) == [
        "glass",
        "##oi",
        "##l",
    ]
    assert tokenizer.unk_token_id not in ids


def test_vocab_file_keyword_pitfall_is_what_we_avoid():
    # transformers 5 swallows `vocab_file=` and builds a 5-token vocabulary: every word becomes [UNK].
    broken = BertTokenizer(vocab_file=str(VOCAB_PATH))
    assert broken.vocab_size == 5
    assert load_tokenizer().vocab_size == 30522


def test_missing_or_foreign_vocab_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "nope.txt")
    small = tmp_path / "vocab.txt"
    small.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n.\n")
    with pytest.raises(RuntimeError, match="special ids"):
        load_tokenizer(small)
