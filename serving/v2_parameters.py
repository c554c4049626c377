"""KServe v2 request parameters as plain values, for every component that reads them."""

from __future__ import annotations

from kserve.errors import InvalidInput
from kserve.protocol.grpc.grpc_predict_v2_pb2 import InferParameter

# Parameters KServe or its clients set for the protocol itself, not for sampling.
V2_PROTOCOL_PARAMETERS = frozenset({"binary_data_output"})


def unwrap_parameters(parameters: object) -> dict:
    """Request parameters as plain values: gRPC hands KServe's predict a map of InferParameter
    protos (bool, int64 or string), REST a dict of JSON values. A proto with none of those set
    carries a type KServe's proto lacks (tritonclient sends a float as a double): refused rather
    than silently dropped."""
    if not parameters:
        return {}
    plain = {}
    for key, value in parameters.items():
        if isinstance(value, InferParameter):
            choice = value.WhichOneof("parameter_choice")
            if choice is None:
                raise InvalidInput(f"parameter {key!r}: gRPC parameters are bool, int64 or string; "
                                   'send a float as a string ("0.7")')
            value = getattr(value, choice)
        plain[key] = value
    return plain


def sampling_parameters(parameters: object) -> dict:
    """The plain parameters of a request, less those that belong to the protocol."""
    return {key: value for key, value in unwrap_parameters(parameters).items() if key not in V2_PROTOCOL_PARAMETERS}
