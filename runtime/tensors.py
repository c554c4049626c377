"""KServe v2 tensors <-> engine prompts and outputs.

Inputs: `input_ids` INT64 [B, N], right-padded, with `input_lengths` INT64 [B] when rows differ.
Outputs: `output_ids` INT64 [B, M] padded with -1, `output_lengths` INT64 [B], `finish_reason`
BYTES [B], and `logprobs` FP32 [B, M] (padded with 0) when the request asks for them.
"""

from __future__ import annotations

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest

from runtime.engine import RequestOutput
from serving.v2_tensors import output_tensor, tensor_array

INPUT_IDS = "input_ids"
INPUT_LENGTHS = "input_lengths"
INTEGER_DATATYPES = ("INT64", "INT32")
OUTPUT_PADDING_ID = -1

INPUT_METADATA = [
    {"name": INPUT_IDS, "datatype": "INT64", "shape": [-1, -1]},
    {"name": INPUT_LENGTHS, "datatype": "INT64", "shape": [-1]},
]
OUTPUT_METADATA = [
    {"name": "output_ids", "datatype": "INT64", "shape": [-1, -1]},
    {"name": "output_lengths", "datatype": "INT64", "shape": [-1]},
    {"name": "finish_reason", "datatype": "BYTES", "shape": [-1]},
    {"name": "logprobs", "datatype": "FP32", "shape": [-1, -1]},
]
_EXPECTED = f"this model takes {INPUT_IDS} INT64 [B, N] and optionally {INPUT_LENGTHS} INT64 [B]"


def decode_prompts(request: InferRequest) -> list[list[int]]:
    """The B prompts of a v2 request, each cut to its length."""
    inputs = {tensor.name: tensor for tensor in request.inputs}
    unexpected = sorted(set(inputs) - {INPUT_IDS, INPUT_LENGTHS})
    if unexpected:
        raise InvalidInput(f"unexpected input tensor(s) {', '.join(map(repr, unexpected))}; {_EXPECTED}")
    if INPUT_IDS not in inputs:
        raise InvalidInput(f"missing input tensor {INPUT_IDS!r}; {_EXPECTED}")
    ids = _as_integer_array(inputs[INPUT_IDS])
    if ids.ndim == 1:
        ids = ids.reshape(1, -1)
    if ids.ndim != 2 or ids.shape[0] == 0:
        raise InvalidInput(f"{INPUT_IDS} must have shape [B, N] with B >= 1, got {list(ids.shape)}")
    if INPUT_LENGTHS not in inputs:
        return [row.tolist() for row in ids]
    lengths = _as_integer_array(inputs[INPUT_LENGTHS]).reshape(-1)
    if lengths.shape[0] != ids.shape[0]:
        raise InvalidInput(f"{INPUT_LENGTHS} has {lengths.shape[0]} entries but {INPUT_IDS} has {ids.shape[0]} rows")
    width = ids.shape[1]
    for length in lengths:
        if not 0 <= length <= width:
            raise InvalidInput(f"{INPUT_LENGTHS} must be in [0, {width}] (the width of {INPUT_IDS}), got {length}")
    return [row[:length].tolist() for row, length in zip(ids, lengths)]


def _as_integer_array(tensor: InferInput) -> np.ndarray:
    if tensor.datatype not in INTEGER_DATATYPES:
        raise InvalidInput(f"{tensor.name} must be INT64 (or INT32), got {tensor.datatype}")
    return tensor_array(tensor).astype(np.int64)


def encode_outputs(outputs: list[RequestOutput], with_logprobs: bool) -> list[InferOutput]:
    """The output tensors of B finished requests."""
    width = max(len(output.output_token_ids) for output in outputs)
    ids = np.full((len(outputs), width), OUTPUT_PADDING_ID, dtype=np.int64)
    logprobs = np.zeros((len(outputs), width), dtype=np.float32)
    for row, output in enumerate(outputs):
        ids[row, : len(output.output_token_ids)] = output.output_token_ids
        if with_logprobs and output.logprobs:
            logprobs[row, : len(output.logprobs)] = output.logprobs
    lengths = np.array([len(output.output_token_ids) for output in outputs], dtype=np.int64)
    reasons = np.array([output.finish_reason.encode() for output in outputs], dtype=np.object_)
    tensors = [output_tensor("output_ids", ids, "INT64"), output_tensor("output_lengths", lengths, "INT64"),
               output_tensor("finish_reason", reasons, "BYTES")]
    if with_logprobs:
        tensors.append(output_tensor("logprobs", logprobs, "FP32"))
    return tensors
