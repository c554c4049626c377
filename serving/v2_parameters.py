"""KServe v2 request parameters as plain values, for every component that reads them."""

from __future__ import annotations

import struct

from kserve.errors import InvalidInput
from kserve.protocol.grpc.grpc_predict_v2_pb2 import InferParameter

# Parameters KServe or its clients set for the protocol itself, not for sampling. `priority` is
# Triton's scheduling hint (tritonclient's `priority=`): accepted and not used, as Triton does for
# a model without priority levels; the engine's own priority is not exposed to requests.
V2_PROTOCOL_PARAMETERS = frozenset({"binary_data_output", "priority"})

# Triton's InferParameter has two choices KServe 0.21's proto lacks; tritonclient's gRPC client
# sends a Python float as `double_param` and `priority=` as `uint64_param`.
TRITON_DOUBLE_FIELD = 4
TRITON_UINT64_FIELD = 5
WIRE_VARINT, WIRE_FIXED64, WIRE_LENGTH_DELIMITED, WIRE_FIXED32 = 0, 1, 2, 5


def unwrap_parameters(parameters: object) -> dict:
    """Request parameters as plain values: gRPC hands KServe's predict a map of InferParameter
    protos (bool, int64 or string, plus Triton's double and uint64, which KServe's proto keeps
    only as unknown fields), REST a dict of JSON values. A proto that carries none of them is
    refused rather than silently dropped."""
    if not parameters:
        return {}
    plain = {}
    for key, value in parameters.items():
        if isinstance(value, InferParameter):
            value = _grpc_parameter_value(key, value)
        plain[key] = value
    return plain


def sampling_parameters(parameters: object) -> dict:
    """The plain parameters of a request, less those that belong to the protocol."""
    return {key: value for key, value in unwrap_parameters(parameters).items() if key not in V2_PROTOCOL_PARAMETERS}


def _grpc_parameter_value(key: str, parameter: InferParameter) -> bool | int | str | float:
    choice = parameter.WhichOneof("parameter_choice")
    if choice is not None:
        return getattr(parameter, choice)
    # With no known choice set, the serialized message holds only the fields KServe does not know.
    value = triton_parameter_value(parameter.SerializeToString())
    if value is None:
        raise InvalidInput(f"parameter {key!r}: gRPC parameters are bool, int64, string, double or uint64")
    return value


def triton_parameter_value(serialized: bytes) -> float | int | None:
    """The double (field 4) or uint64 (field 5) of a serialized Triton InferParameter, the last
    one if several (a oneof keeps the last); None without either. Decoded from the bytes because
    upb-based protobuf has no UnknownFields() and KServe's proto cannot be extended here."""
    value = None
    position = 0
    while position < len(serialized):
        tag, position = _read_varint(serialized, position)
        field, wire_type = tag >> 3, tag & 7
        if wire_type == WIRE_VARINT:
            number, position = _read_varint(serialized, position)
            if field == TRITON_UINT64_FIELD:
                value = number
        elif wire_type == WIRE_FIXED64:
            if field == TRITON_DOUBLE_FIELD and position + 8 <= len(serialized):
                value = struct.unpack_from("<d", serialized, position)[0]
            position += 8
        elif wire_type == WIRE_LENGTH_DELIMITED:
            length, position = _read_varint(serialized, position)
            position += length
        elif wire_type == WIRE_FIXED32:
            position += 4
        else:
            raise InvalidInput(f"a gRPC parameter holds a field of unsupported wire type {wire_type}")
    if position > len(serialized):
        raise InvalidInput("a gRPC parameter's bytes end inside a field")
    return value


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    """A base-128 varint at `position`, and the position after it."""
    number = shift = 0
    while True:
        if position >= len(data):
            raise InvalidInput("a gRPC parameter's bytes end inside a varint")
        byte = data[position]
        number |= (byte & 0x7F) << shift
        position += 1
        if byte < 0x80:
            return number, position
        shift += 7
