"""KServe v2 tensors for every component: input tensors as arrays and as text (data that does not
fit its tensor's shape or datatype, and BYTES that are not UTF-8, are the client's error (400),
not a numpy or codec failure (500)), and output tensors from arrays."""

from __future__ import annotations

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferOutput


def tensor_array(tensor: InferInput) -> np.ndarray:
    """The tensor's data as an array of its shape and datatype."""
    try:
        return tensor.as_numpy()
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"{tensor.name}: its data does not match its shape {list(tensor.shape)} and datatype "
                           f"{tensor.datatype}: {exc}") from None


def tensor_elements(tensor: InferInput) -> list:
    """The tensor's elements, in row-major order."""
    return tensor_array(tensor).reshape(-1).tolist()


def element_text(element: object, tensor_name: str) -> str:
    """One element of a BYTES tensor as text: bytes (binary and gRPC data) decoded as UTF-8,
    anything else (REST JSON data) as its string."""
    if isinstance(element, bytes):
        try:
            return element.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"{tensor_name} must hold UTF-8 text") from None
    return str(element)


def text_rows(tensor: InferInput, expected: str) -> list[str]:
    """A BYTES [B] tensor of one text per row (B >= 1); `expected` tells a client what the model
    takes when the tensor is not that."""
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"{tensor.name} must be BYTES, got {tensor.datatype}; {expected}")
    rows = [element_text(element, tensor.name) for element in tensor_elements(tensor)]
    if not rows:
        raise InvalidInput(f"{tensor.name} is empty; {expected}")
    return rows


def output_tensor(name: str, array: np.ndarray, datatype: str) -> InferOutput:
    """An output tensor of the array's shape, its data written as JSON (KServe encodes it as
    binary when the request asks for that)."""
    tensor = InferOutput(name=name, shape=list(array.shape), datatype=datatype)
    tensor.set_data_from_numpy(array, binary_data=False)
    return tensor
