"""The v2 side of the router: the prompts of a `text_input` BYTES [B] request, the request echoed
back as REST JSON so that the next step of an InferenceGraph can take it as its own, and the
decision as output tensors (`route` BYTES [1], `route_score` FP32 [1]) for gRPC."""

from __future__ import annotations

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, RequestedOutput, to_http_parameters

from serving.v2_tensors import element_text, output_tensor, tensor_elements, text_rows

TEXT_INPUT = "text_input"
INPUT_METADATA = [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}]
OUTPUT_METADATA = [
    {"name": "route", "datatype": "BYTES", "shape": [1]},
    {"name": "route_score", "datatype": "FP32", "shape": [1]},
]
_EXPECTED = f"the router takes {TEXT_INPUT} BYTES [B] (one prompt per row)"


def request_parameters(request: InferRequest) -> dict:
    """The request's parameters as plain values (gRPC sends them as protos)."""
    return to_http_parameters(request.parameters) if request.parameters else {}


def prompts_of(request: InferRequest) -> list[str]:
    tensor = request.get_input_by_name(TEXT_INPUT)
    if tensor is None:
        names = ", ".join(repr(each.name) for each in request.inputs) or "none"
        raise InvalidInput(f"missing input tensor {TEXT_INPUT!r} (got {names}); {_EXPECTED}")
    return text_rows(tensor, _EXPECTED)


def route_outputs(route: str, score: float) -> list[InferOutput]:
    return [output_tensor("route", np.array([route.encode()], dtype=np.object_), "BYTES"),
            output_tensor("route_score", np.array([score], dtype=np.float32), "FP32")]


def echo_request(request: InferRequest, consumed_parameters: frozenset[str]) -> dict:
    """The request as v2 REST JSON, all inputs as JSON data, without the parameters meant for the
    router alone (the targets would refuse them)."""
    echoed: dict = {"id": request.id, "inputs": [_echo_tensor(tensor) for tensor in request.inputs]}
    if request.request_outputs:
        echoed["outputs"] = [_echo_requested_output(output) for output in request.request_outputs]
    parameters = {key: value for key, value in request_parameters(request).items() if key not in consumed_parameters}
    if parameters:
        echoed["parameters"] = parameters
    return {key: value for key, value in echoed.items() if value is not None}


def _echo_tensor(tensor: InferInput) -> dict:
    elements = tensor_elements(tensor)
    if tensor.datatype == "BYTES":
        elements = [element_text(element, tensor.name) for element in elements]
    echoed = {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype, "data": elements}
    # Binary inputs arrive with their size as a parameter; the echo is JSON, so it no longer applies.
    parameters = {key: value for key, value in to_http_parameters(tensor.parameters or {}).items()
                  if key != "binary_data_size"}
    if parameters:
        echoed["parameters"] = parameters
    return echoed


def _echo_requested_output(output: RequestedOutput) -> dict:
    echoed = {"name": output.name}
    if output.parameters:
        echoed["parameters"] = to_http_parameters(output.parameters)
    return echoed

