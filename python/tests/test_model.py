"""The Python module against the golden fixtures of tests/data (Hugging Face float32 outputs)."""
import json
import os
import struct

import numpy as np
import pytest

import dsmoe

DATA = os.environ.get("DSMOE_TEST_DATA", os.path.join(os.path.dirname(__file__), "../../tests/data"))
FIXTURES = ["v2-tiny", "v3-tiny"]


def read_safetensors(path):
    """A minimal safetensors reader (the test must not depend on the engine it checks)."""
    dtypes = {"F32": np.float32, "I64": np.int64}
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        body = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        tensors[name] = np.frombuffer(body[begin:end], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return tensors


@pytest.fixture(scope="module", params=FIXTURES)
def fixture(request):
    root = os.path.join(DATA, request.param)
    return root, read_safetensors(os.path.join(root, "expected.safetensors"))


def test_forward_matches_reference(fixture):
    root, expected = fixture
    model = dsmoe.Model(os.path.join(root, "model"))
    logits = model.forward(expected["input_ids"])
    ref = expected["logits"]
    assert logits.dtype == np.float32 and logits.shape == ref.shape
    assert np.abs(logits - ref).max() <= 1e-4 * np.abs(ref).max()


def test_generate_is_greedy_and_returns_new_tokens(fixture):
    root, expected = fixture
    model = dsmoe.Model(os.path.join(root, "model"), threads=1)
    ids = expected["input_ids"][0]
    new = model.generate(ids[:4].tolist(), max_new_tokens=5)
    assert len(new) == 5
    # Greedy: each new token is the argmax of a full forward over what came before.
    seq = ids[:4].tolist()
    for token in new:
        logits = model.forward(np.array([seq], dtype=np.int64))
        assert token == int(np.argmax(logits[0, -1]))
        seq.append(token)


def test_config_is_the_json(fixture):
    root, _ = fixture
    model = dsmoe.Model(os.path.join(root, "model"), weights="bf16")
    with open(os.path.join(root, "model", "config.json")) as f:
        assert model.config == json.load(f)


def test_errors_are_clear():
    with pytest.raises(dsmoe.Error, match="nonexistent-dir"):
        dsmoe.Model("/nonexistent-dir")
    model = dsmoe.Model(os.path.join(DATA, "v3-tiny", "model"), weights="f32")
    with pytest.raises(dsmoe.Error, match="2-D"):
        model.forward(np.zeros(3, dtype=np.int64))
    with pytest.raises(dsmoe.Error):
        model.forward(np.full((1, 2), 10**9, dtype=np.int64))
    with pytest.raises(dsmoe.Error, match="weights"):
        dsmoe.Model(os.path.join(DATA, "v3-tiny", "model"), weights="q5_k")


def test_generate_matches_reference_generation(fixture):
    root, expected = fixture
    model = dsmoe.Model(os.path.join(root, "model"))
    prompt = expected["gen.prompt"][0].tolist()
    output = expected["gen.output"][0].tolist()
    assert model.generate(prompt, max_new_tokens=len(output) - len(prompt)) == output[len(prompt):]
