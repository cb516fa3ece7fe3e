"""Fixtures of the text tests: the shipped tokenizer (built once per session)."""
import pytest

from grounding.text import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer()
