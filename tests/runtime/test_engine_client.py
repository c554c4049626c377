"""Both engines the KServe layer runs on, AsyncLLMEngine and RayEngineClient, have every member
of the EngineClient protocol with a signature it can be called with, and so do their streams
of outputs (OutputStream): a check of each member, not an isinstance on an empty protocol."""

from __future__ import annotations

import inspect

import pytest
from typing_extensions import get_protocol_members

from runtime.engine import AsyncLLMEngine, EngineClient, OutputStream
from runtime.engine.async_engine import RequestStream
from runtime.ray_serving import RayEngineClient


def protocol_members(protocol: type) -> dict[str, object]:
    """Each member the protocol declares: a method or a property."""
    return {name: inspect.getattr_static(protocol, name) for name in get_protocol_members(protocol)}


def check_member(implementation: type, name: str, wanted: object) -> None:
    assert hasattr(implementation, name), f"{implementation.__name__} lacks {name}"
    member = inspect.getattr_static(implementation, name)
    if isinstance(wanted, property):
        assert isinstance(member, property), f"{implementation.__name__}.{name} is not a property"
        return
    assert inspect.isfunction(member), f"{implementation.__name__}.{name} is not a method"
    is_async = inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member)
    assert is_async == inspect.iscoroutinefunction(wanted), f"{implementation.__name__}.{name}: async differs"
    check_callable_as(member, wanted, f"{implementation.__name__}.{name}")


def check_callable_as(member: object, wanted: object, where: str) -> None:
    """Every parameter of `wanted` is accepted by `member`, by the same name and position,
    and `member` needs no other."""
    wanted_parameters = list(inspect.signature(wanted).parameters.values())
    parameters = list(inspect.signature(member).parameters.values())
    for index, expected in enumerate(wanted_parameters):
        assert index < len(parameters), f"{where} takes no {expected.name}"
        actual = parameters[index]
        assert (actual.name, actual.kind) == (expected.name, expected.kind), f"{where}: {actual} in place of {expected}"
    extra = [parameter for parameter in parameters[len(wanted_parameters):]
             if parameter.default is inspect.Parameter.empty
             and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    assert not extra, f"{where} needs {extra}, which callers do not pass"


def test_the_protocols_list_what_the_kserve_layer_calls():
    assert set(protocol_members(EngineClient)) == {"start", "shutdown", "is_running", "dead_reason", "stats", "open"}
    assert set(protocol_members(OutputStream)) == {"__aiter__", "__anext__", "aclose"}


@pytest.mark.parametrize("implementation", [AsyncLLMEngine, RayEngineClient])
def test_each_engine_is_an_engine_client(implementation):
    for name, wanted in protocol_members(EngineClient).items():
        check_member(implementation, name, wanted)


def test_the_in_process_engine_streams_an_output_stream():
    for name, wanted in protocol_members(OutputStream).items():
        check_member(RequestStream, name, wanted)


def test_the_ray_client_streams_from_an_async_generator():
    # An async generator has __aiter__, __anext__ and aclose by construction.
    assert inspect.isasyncgenfunction(inspect.getattr_static(RayEngineClient, "_outputs").__func__)
