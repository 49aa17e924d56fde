"""The Python Tokenizer against Hugging Face tokenizers' ids for DeepSeek-V3 (tests/data/tokenizer-v3)."""
import json
import os

import pytest

import dsmoe

DATA = os.environ.get("DSMOE_TEST_DATA", os.path.join(os.path.dirname(__file__), "../../tests/data"))
TOKENIZER = os.path.join(DATA, "tokenizer-v3")


def read_jsonl(name):
    with open(os.path.join(TOKENIZER, name), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def tokenizer():
    return dsmoe.Tokenizer(TOKENIZER)


def test_every_case(tokenizer):
    for case in read_jsonl("cases.jsonl"):
        assert tokenizer.encode(case["text"]) == case["ids"], case["text"]
        assert tokenizer.encode(case["text"], add_special_tokens=True) == case["ids_with_special"]
        assert tokenizer.decode(case["ids"]) == case["decoded"]


def test_every_chat(tokenizer):
    for chat in read_jsonl("chat.jsonl"):
        rendered = tokenizer.apply_chat_template(
            chat["messages"], add_generation_prompt=chat["add_generation_prompt"])
        assert rendered == chat["rendered"]
        assert tokenizer.apply_chat_template(
            chat["messages"], add_generation_prompt=chat["add_generation_prompt"],
            tokenize=True) == chat["ids"]


def test_special_ids(tokenizer):
    assert tokenizer.bos_token_id == 0
    assert tokenizer.eos_token_id == 1
    assert tokenizer.vocab_size == 128815
    assert tokenizer.decode([0, 19923], skip_special_tokens=True) == "Hello"


def test_missing_tokenizer_is_a_clear_error():
    with pytest.raises(dsmoe.Error, match="tokenizer.json"):
        dsmoe.Tokenizer("/nonexistent-dir")
