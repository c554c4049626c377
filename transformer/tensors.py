"""KServe v2 tensors of the transformer: prompts in `text_input` BYTES [B]; outputs `text_output`
BYTES [B], `finish_reason` BYTES [B], `prompt_tokens` and `completion_tokens` INT64 [B], and
`confidence` FP32 [B] (the least likely token's logprob; NaN when there is none)."""

from __future__ import annotations

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest

from serving.v2_tensors import output_tensor, text_rows
from transformer.generation import TextResult

TEXT_INPUT = "text_input"
INPUT_METADATA = [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}]
OUTPUT_METADATA = [
    {"name": "text_output", "datatype": "BYTES", "shape": [-1]},
    {"name": "finish_reason", "datatype": "BYTES", "shape": [-1]},
    {"name": "prompt_tokens", "datatype": "INT64", "shape": [-1]},
    {"name": "completion_tokens", "datatype": "INT64", "shape": [-1]},
    {"name": "confidence", "datatype": "FP32", "shape": [-1]},
]
_EXPECTED = f"this model takes {TEXT_INPUT} BYTES [B] (one prompt per row)"


def decode_prompts(request: InferRequest) -> list[str]:
    """The B text prompts of a v2 request."""
    inputs = {tensor.name: tensor for tensor in request.inputs}
    if set(inputs) != {TEXT_INPUT}:
        raise InvalidInput(f"unexpected input tensors {sorted(inputs)}; {_EXPECTED}")
    return text_rows(inputs[TEXT_INPUT], _EXPECTED)


def encode_results(results: list[TextResult]) -> list[InferOutput]:
    """The output tensors of B finished generations."""
    columns = [
        ("text_output", "BYTES", np.array([result.text.encode() for result in results], dtype=np.object_)),
        ("finish_reason", "BYTES", np.array([result.finish_reason.encode() for result in results], dtype=np.object_)),
        ("prompt_tokens", "INT64", np.array([result.num_prompt_tokens for result in results], dtype=np.int64)),
        ("completion_tokens", "INT64", np.array([len(result.token_ids) for result in results], dtype=np.int64)),
        ("confidence", "FP32", np.array([_or_nan(result.confidence) for result in results], dtype=np.float32)),
    ]
    return [output_tensor(name, array, datatype) for name, datatype, array in columns]


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value
