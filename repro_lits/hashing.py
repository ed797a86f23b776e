"""Bitwise SHA-256 fingerprints of model weights and of test predictions.

Weights: the hash covers the whole state dict, that is every parameter and
every buffer. For the U-Net the buffers are each BatchNorm3d's
``running_mean`` and ``running_var`` (float32) and ``num_batches_tracked``
(int64). Tensors are taken in sorted name order. For each one the hash reads
its name, dtype, shape and raw bytes (C order, native byte order). Each field
is prefixed with its length, so two different state dicts never give the
same byte stream.

Predictions: the hash covers the test-set argmax labels, (X, Y, Z) uint8 per
case, in sorted case-id order, with each case's id, dtype and shape.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

import numpy as np
import torch


def _update_field(digest: "hashlib._Hash", data: bytes) -> None:
    digest.update(struct.pack("<Q", len(data)))
    digest.update(data)


def _update_array(digest: "hashlib._Hash", name: str, dtype: str, shape: tuple[int, ...], raw: bytes) -> None:
    _update_field(digest, name.encode("utf-8"))
    _update_field(digest, dtype.encode("ascii"))
    _update_field(digest, ",".join(str(n) for n in shape).encode("ascii"))
    _update_field(digest, raw)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Return the raw bytes of a tensor's values in C order, copied to the CPU."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    # Viewing as uint8 works for every dtype, bfloat16 included, which NumPy cannot represent.
    return flat.view(torch.uint8).numpy().tobytes()


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a state dict: every tensor in sorted name order, with name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        _update_array(digest, name, str(tensor.dtype), tuple(tensor.shape), tensor_bytes(tensor))
    return digest.hexdigest()


def model_sha256(model: torch.nn.Module) -> str:
    """SHA-256 (hex) of a model's state dict, parameters and buffers included (see module docstring)."""
    return state_dict_sha256(model.state_dict())


def predictions_sha256(predictions: Mapping[str, np.ndarray]) -> str:
    """SHA-256 (hex) of test predictions: case id -> (X, Y, Z) uint8 labels, in sorted case-id order."""
    digest = hashlib.sha256()
    for case in sorted(predictions):
        labels = np.ascontiguousarray(predictions[case])
        _update_array(digest, case, labels.dtype.str, labels.shape, labels.tobytes())
    return digest.hexdigest()
