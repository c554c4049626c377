"""v2 parameters as plain values: Triton's double and uint64 InferParameter choices, which KServe's
proto keeps only as unknown fields, decoded from hand-built wire bytes."""

from __future__ import annotations

import struct

import pytest
from kserve.errors import InvalidInput
from kserve.protocol.grpc.grpc_predict_v2_pb2 import InferParameter

from serving.v2_parameters import (
    sampling_parameters,
    triton_parameter_value,
    unwrap_parameters,
)

# Tags of Triton's InferParameter fields: (field number << 3) | wire type.
DOUBLE_TAG = bytes([4 << 3 | 1])
UINT64_TAG = bytes([5 << 3 | 0])
STRING_TAG = bytes([3 << 3 | 2])


def double_field(value: float) -> bytes:
    return DOUBLE_TAG + struct.pack("<d", value)


def uint64_field(varint: bytes) -> bytes:
    return UINT64_TAG + varint


def test_double():
    assert triton_parameter_value(double_field(0.7)) == 0.7
    assert triton_parameter_value(double_field(-1.0)) == -1.0


def test_uint64_beyond_int64():
    assert triton_parameter_value(uint64_field(b"\x02")) == 2
    assert triton_parameter_value(uint64_field(b"\xac\x02")) == 300
    assert triton_parameter_value(uint64_field(b"\xff" * 9 + b"\x01")) == 2**64 - 1


def test_neither():
    assert triton_parameter_value(b"") is None
    assert triton_parameter_value(STRING_TAG + b"\x030.7") is None


def test_the_last_choice_wins():
    assert triton_parameter_value(double_field(0.5) + uint64_field(b"\x03")) == 3
    assert triton_parameter_value(uint64_field(b"\x03") + double_field(0.5)) == 0.5


@pytest.mark.parametrize("truncated", [DOUBLE_TAG + b"\x00" * 7, UINT64_TAG + b"\x80", STRING_TAG + b"\x05ab"])
def test_truncated_bytes_are_refused(truncated):
    with pytest.raises(InvalidInput, match="end inside"):
        triton_parameter_value(truncated)


def test_grpc_parameters_as_kserve_parses_them():
    parameters = {
        "temperature": InferParameter.FromString(double_field(0.7)),
        "priority": InferParameter.FromString(uint64_field(b"\x02")),
        "max_tokens": InferParameter(int64_param=8),
        "ignore_eos": InferParameter(bool_param=True),
        "top_p": InferParameter(string_param="0.9"),
    }
    assert unwrap_parameters(parameters) == {"temperature": 0.7, "priority": 2, "max_tokens": 8, "ignore_eos": True,
                                             "top_p": "0.9"}
    # priority is Triton's scheduling hint, not a sampling field.
    assert sampling_parameters(parameters) == {"temperature": 0.7, "max_tokens": 8, "ignore_eos": True, "top_p": "0.9"}


def test_an_empty_grpc_parameter_is_refused():
    with pytest.raises(InvalidInput, match="'seed'.*bool, int64, string, double or uint64"):
        unwrap_parameters({"seed": InferParameter()})
