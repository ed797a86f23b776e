"""Tests of the weight and prediction hashes: what changes them and what does not."""

import hashlib
import struct

import numpy as np
import torch

from repro_lits.hashing import model_sha256, predictions_sha256, state_dict_sha256
from repro_lits.model import UNet3D


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return UNet3D(width=2)


def test_same_weights_same_hash():
    assert model_sha256(_model(0)) == model_sha256(_model(0))


def test_one_bit_changes_hash():
    model = _model(0)
    before = model_sha256(model)
    with torch.no_grad():
        weight = model.output.weight.view(-1)
        weight[0] = torch.nextafter(weight[0], torch.tensor(1.0))
    assert model_sha256(model) != before


def test_buffers_are_hashed():
    model = _model(0)
    before = model_sha256(model)
    model.input_block[2].num_batches_tracked += 1
    assert model_sha256(model) != before
    model.input_block[2].num_batches_tracked -= 1
    model.input_block[2].running_var[0] = 2.0
    assert model_sha256(model) != before


def test_order_of_state_dict_ignored():
    state = _model(0).state_dict()
    reversed_state = dict(reversed(list(state.items())))
    assert state_dict_sha256(state) == state_dict_sha256(reversed_state)


def test_dtype_and_shape_are_hashed():
    values = torch.arange(6, dtype=torch.int32)
    assert state_dict_sha256({"w": values}) != state_dict_sha256({"w": values.reshape(2, 3)})
    assert state_dict_sha256({"w": values}) != state_dict_sha256({"w": values.view(torch.float32)})


def test_single_tensor_hash_layout():
    tensor = torch.tensor([1.0, 2.0], dtype=torch.float32)
    expected = hashlib.sha256()
    for field in (b"w", b"torch.float32", b"2", tensor.numpy().tobytes()):
        expected.update(struct.pack("<Q", len(field)) + field)
    assert state_dict_sha256({"w": tensor}) == expected.hexdigest()


def test_predictions_hash_sorted_cases():
    a = np.zeros((2, 2, 2), dtype=np.uint8)
    b = np.ones((2, 2, 2), dtype=np.uint8)
    assert predictions_sha256({"1": a, "2": b}) == predictions_sha256({"2": b, "1": a})
    assert predictions_sha256({"1": a, "2": b}) != predictions_sha256({"1": b, "2": a})
