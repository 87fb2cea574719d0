"""The error tree's protobuf mapping: ItemError to and from CimError."""

from __future__ import annotations

import grpc
import pytest

from cim import errors
from cim.proto.v1 import common_pb2

_CLASSES = [
    errors.InvalidArgument,
    errors.NotFound,
    errors.AlreadyExists,
    errors.PermissionDenied,
    errors.Unauthenticated,
    errors.Unavailable,
    errors.ResourceExhausted,
    errors.FailedPrecondition,
    errors.DeadlineExceeded,
    errors.Internal,
]


@pytest.mark.parametrize("cls", _CLASSES)
def test_to_item_carries_the_google_rpc_code_and_message(cls: type[errors.CimError]) -> None:
    item = errors.to_item(cls("boom"))
    assert isinstance(item, common_pb2.ItemError)
    assert item.code == cls.code.value[0]
    assert item.message == "boom"


@pytest.mark.parametrize("cls", _CLASSES)
def test_from_item_round_trips_every_class(cls: type[errors.CimError]) -> None:
    back = errors.from_item(errors.to_item(cls("why")))
    assert type(back) is cls
    assert back.message == "why"


def test_to_item_uses_the_numbers_of_google_rpc_code() -> None:
    assert errors.to_item(errors.NotFound("x")).code == 5
    assert errors.to_item(errors.Unavailable("x")).code == 14


def test_from_item_of_an_unknown_number_is_a_plain_cim_error() -> None:
    back = errors.from_item(common_pb2.ItemError(code=999, message="odd"))
    assert type(back) is errors.CimError
    assert back.code is grpc.StatusCode.UNKNOWN
    assert back.message == "odd"


def test_from_item_of_an_unmapped_code_without_message_names_the_code() -> None:
    back = errors.from_item(common_pb2.ItemError(code=grpc.StatusCode.CANCELLED.value[0]))
    assert type(back) is errors.CimError
    assert back.message == "CANCELLED"


def test_base_error_round_trips_as_unknown() -> None:
    item = errors.to_item(errors.CimError("plain"))
    assert item.code == grpc.StatusCode.UNKNOWN.value[0]
    back = errors.from_item(item)
    assert type(back) is errors.CimError
    assert back.message == "plain"
