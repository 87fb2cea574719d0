"""A route's delivery batches to one chat server carry typing notes and read
receipts beside the pushes (cim.route.servers.ServerLink): one request, the
notes with no flags of their own, every push keeping its flag."""

from __future__ import annotations

from cim.core.members import Member, MemberKind
from cim.proto.internal.v1 import chat_internal_pb2
from cim.proto.v1 import chat_pb2, common_pb2
from cim.route.servers import NoteParcel, ServerLink


class FakeStream:
    """Answers each request as a chat server whose receivers are all live."""

    def __init__(self) -> None:
        self.requests: list[chat_internal_pb2.DeliverRequest] = []

    async def call(self, request: chat_internal_pb2.DeliverRequest) -> object:
        self.requests.append(request)
        return chat_internal_pb2.DeliverResponse(delivered=[True] * len(request.deliveries))

    async def aclose(self) -> None:
        pass


def push(receiver_id: int) -> chat_internal_pb2.Delivery:
    return chat_internal_pb2.Delivery(
        receiver_id=receiver_id, message=common_pb2.ChatMessage(text="hi", seq=1)
    )


def typing_note(*receivers: int) -> chat_internal_pb2.TypingNote:
    typing = chat_pb2.Typing(conversation_id="g:1", user_id=1, user_name="ann")
    return chat_internal_pb2.TypingNote(receiver_ids=receivers, typing=typing)


def read_note(receiver: int) -> chat_internal_pb2.ReadNote:
    receipt = chat_pb2.ReadReceipt(conversation_id="p:1:2", user_id=1, position=4)
    return chat_internal_pb2.ReadNote(receiver_id=receiver, receipt=receipt)


async def test_notes_ride_in_the_same_request_and_take_no_flags() -> None:
    link = ServerLink(Member(MemberKind.SERVER, "server-1", "127.0.0.1:1"), "secret", 1.0)
    stream = FakeStream()
    link._stream = stream  # type: ignore[assignment]
    note, read = typing_note(2, 3), read_note(2)
    results = await link._send_parcels(
        [[push(2)], NoteParcel(typings=[note]), [push(3), push(4)], NoteParcel(reads=[read])]
    )
    assert results == [[True], [], [True, True], []]
    (request,) = stream.requests
    assert [d.receiver_id for d in request.deliveries] == [2, 3, 4]
    assert (list(request.typings), list(request.reads)) == ([note], [read])
    # Notes alone: a request of notes, no flags expected back.
    assert await link._send_parcels([NoteParcel(typings=[note]), NoteParcel(reads=[read])]) == [
        [],
        [],
    ]
    last = stream.requests[-1]
    assert not last.deliveries and (len(last.typings), len(last.reads)) == (1, 1)
    await link.aclose()
