"""The interactive console of ``cim client``: CIM's commands over the client library.

In a terminal it uses prompt_toolkit, so pushed messages print above the line
being typed instead of garbling it. Without a terminal (a pipe) it reads lines
from stdin and prints plainly, which keeps it scriptable. Typing notes, both
ways, are ``cim.client.typing_display``'s.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable

from prompt_toolkit import PromptSession
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.shortcuts import print_formatted_text
from prompt_toolkit.styles import Style
from prompt_toolkit.utils import is_dumb_terminal

from cim.client import commands, emoji
from cim.client.chatlog import ChatLog, highlight
from cim.client.client import CimClient, ClientEvent, EventKind
from cim.client.typing_display import TypingDisplay
from cim.core import conversations
from cim.errors import CimError
from cim.proto.v1 import chat_pb2, common_pb2, route_pb2

# Lines of history one :his shows.
HISTORY_LINES = 20
# Lines one :convs shows, and conversations the unread summary at login reads.
CONVERSATION_LINES = 20
UNREAD_SUMMARY_LINES = 50
# My messages per conversation remembered for "read" lines.
RECEIPT_MEMORY = 200
# Characters of a message shown in a list line or a "read" line.
CLIP_CHARS = 40
# Pages of receipts one :reads scans at most (about 100 readers each).
READER_PAGES = 20
STYLE = Style.from_dict(
    {
        "time": "#888888",
        "sender": "bold #00aa00",
        "private": "bold #aa00aa",
        "system": "italic #0088cc",
        "notice": "bold #cc6600",
        "error": "bold #cc0000",
        "highlight": "reverse bold",
        "prompt": "bold",
        "typing": "italic #888888",
        "bottom-toolbar": "noreverse",
        "read": "#00aa88",
    }
)

Fragments = list[tuple[str, str]]


def _clip(text: str) -> str:
    return text if len(text) <= CLIP_CHARS else text[: CLIP_CHARS - 1] + "\u2026"


class Console:
    def __init__(self, client: CimClient, chatlog: ChatLog, *, interactive: bool) -> None:
        self.client = client
        self.chatlog = chatlog
        self.interactive = interactive
        self._delayed: set[asyncio.Task[None]] = set()
        self._ended = asyncio.Event()
        client.on_message = self.show_message
        client.on_event = self.show_event
        # Who else is typing: in the toolbar of a terminal that can redraw it,
        # else as a line above the input.
        self.typing = TypingDisplay(
            client, self._print, toolbar=interactive and not is_dumb_terminal()
        )
        client.on_typing = self.typing.note
        client.on_receipt = self.show_receipt
        # Names seen (senders, list titles), for receipts: user id -> name.
        self._names: dict[int, str] = {}
        # My private messages not yet read by the other side:
        # conversation id -> {position: text}.
        self._unread_by_peer: dict[str, dict[int, str]] = {}
        # Where :convs more goes on: the last line shown (activity, id).
        self._convs_after: tuple[int, str] | None = None

    # --- output ---------------------------------------------------------------
    def _print(self, fragments: Fragments) -> None:
        if self.interactive:
            print_formatted_text(FormattedText(fragments), style=STYLE)
        else:
            print("".join(text for _, text in fragments), flush=True)

    def system(self, text: str) -> None:
        self._print([("class:system", f"* {text}")])

    def error(self, text: str) -> None:
        self._print([("class:error", f"! {text}")])

    def show_message(self, message: common_pb2.ChatMessage) -> None:
        self.typing.message(message)
        stamp = time.strftime("%H:%M:%S", time.localtime(message.server_time_ms / 1000))
        if message.kind == common_pb2.MESSAGE_KIND_SYSTEM:
            self._show_notice(stamp, message)
            return
        if message.kind == common_pb2.MESSAGE_KIND_MEMBERSHIP:
            self._mark_shown(message)
            line = f"[{message.group_id}] {message.text}"
            self._print([("class:time", f"[{stamp}] "), ("class:system", f"* {line}")])
            self.chatlog.append(f"* {line}")
            return
        self._mark_shown(message)
        private = message.kind == common_pb2.MESSAGE_KIND_PRIVATE
        in_group = message.group_id.startswith("g:")
        tags = (
            (" (private)" if private else "")
            + (f" [{message.group_id}]" if in_group else "")
            + (" (stored)" if message.stored else "")
        )
        fragments: Fragments = [
            ("class:time", f"[{stamp}] "),
            (
                "class:private" if private else "class:sender",
                f"{message.sender_name}#{message.sender_id}{tags}",
            ),
            ("", f": {message.text}"),
        ]
        self._print(fragments)
        self.chatlog.append(f"{message.sender_name}#{message.sender_id}{tags}: {message.text}")

    def _show_notice(self, stamp: str, message: common_pb2.ChatMessage) -> None:
        """An administrators' notice: in the system style, never as a user's
        message (its sender id 0 is no one's)."""
        scope = "to you" if message.seq else "to everyone online"
        tags = f"{scope}, stored" if message.stored else scope
        label = f"NOTICE from the administrators ({tags})"
        self._print(
            [
                ("class:time", f"[{stamp}] "),
                ("class:notice", f"*** {label}: "),
                ("class:notice", message.text),
            ]
        )
        self.chatlog.append(f"*** {label}: {message.text}")

    # --- read marks and receipts ---------------------------------------------
    def _mark_shown(self, message: common_pb2.ChatMessage) -> None:
        """What is shown is read: marked on the stream (batched by the client)."""
        if message.sender_name:
            self._names[message.sender_id] = message.sender_name
        if message.conversation_id and message.position:
            try:
                self.client.mark_read(message.conversation_id, message.position)
            except CimError as exc:  # a message not meant for us: never marked
                self.error(f"cannot mark {message.conversation_id} read: {exc.message}")

    def _sent(self, conversation_id: str, position: int, text: str) -> None:
        """Remembers a private message of mine until the other side reads it."""
        if position:
            mine = self._unread_by_peer.setdefault(conversation_id, {})
            mine[position] = text
            while len(mine) > RECEIPT_MEMORY:
                del mine[min(mine)]

    def show_receipt(self, receipt: chat_pb2.ReadReceipt) -> None:
        """The other side read up to a position: a "read" line for my newest
        message it covers (and how many before it), once each."""
        mine = self._unread_by_peer.get(receipt.conversation_id, {})
        covered = sorted(p for p in mine if p <= receipt.position)
        if not covered:
            return
        newest = mine[covered[-1]]
        for position in covered:
            del mine[position]
        who = f"{self._names.get(receipt.user_id, '')}#{receipt.user_id}"
        earlier = f" (and {len(covered) - 1} before it)" if len(covered) > 1 else ""
        stamp = time.strftime("%H:%M:%S")
        self._print(
            [
                ("class:time", f"[{stamp}] "),
                ("class:read", f"\u2713 read by {who}: "),
                ("", f"{_clip(newest)}{earlier}"),
            ]
        )

    async def show_unread(self) -> None:
        """At login, before the replay marks anything read: where unread
        messages wait (best effort: a failed list is skipped)."""
        try:
            page = await self.client.list_conversations(limit=UNREAD_SUMMARY_LINES)
        except CimError:
            return
        waiting = [line for line in page.conversations if line.unread]
        for line in page.conversations:
            self._learn_name(line)
        if not waiting:
            self.system("no unread messages")
            return
        total = sum(line.unread for line in waiting)
        self.system(f"{total} unread message(s) in {len(waiting)} conversation(s):")
        for line in waiting:
            self._print([("", f"  {line.unread} unread in "), *self._title(line)])

    async def list_conversations(self, more: bool) -> None:
        before_ms, before_id = self._convs_after if more and self._convs_after else (0, "")
        if more and self._convs_after is None:
            self.system("no more conversations: :convs lists from the latest")
            return
        page = await self.client.list_conversations(before_ms, before_id, CONVERSATION_LINES)
        lines = list(page.conversations)
        self._convs_after = (
            (lines[-1].last_activity_ms, lines[-1].conversation_id) if page.more else None
        )
        if not lines:
            self.system("no conversations yet" if not more else "no more conversations")
            return
        self.system(f"{len(lines)} conversation(s), latest first:")
        for line in lines:
            self._learn_name(line)
            self._print(self._conversation_line(line))
        if page.more:
            self.system("older: :convs more")

    def _learn_name(self, line: route_pb2.ConversationSummary) -> None:
        if line.peer_id and line.title:
            self._names[line.peer_id] = line.title

    @staticmethod
    def _title(line: route_pb2.ConversationSummary) -> Fragments:
        if line.peer_id:
            return [
                ("class:private", f"{line.title}#{line.peer_id}"),
                ("", f" ({line.conversation_id})"),
            ]
        return [("class:sender", line.title), ("", f" ({line.conversation_id})")]

    def _conversation_line(self, line: route_pb2.ConversationSummary) -> Fragments:
        unread = f"{line.unread} unread" if line.unread else "read"
        fragments: Fragments = [
            ("", "  "),
            *self._title(line),
            ("class:notice" if line.unread else "", f"  {unread}"),
        ]
        last = line.last_message
        if line.HasField("last_message"):
            stamp = time.strftime("%m-%d %H:%M", time.localtime(last.server_time_ms / 1000))
            who = "me" if last.sender_id == self.client.user_id else last.sender_name or "*"
            fragments += [("class:time", f"  [{stamp}] "), ("", f"{who}: {_clip(last.preview)}")]
        if line.peer_id and line.peer_read_position:
            fragments.append(("class:read", f"  (read by them up to #{line.peer_read_position})"))
        return fragments

    async def show_readers(self, conversation: str, position: int) -> None:
        """Who (but me) has read a group, or the conversation with a user, up
        to a position (0: its newest message), a few pages of receipts at most."""
        cid = (
            conversation
            if conversation.startswith("g:")
            else conversations.private_id(self.client.user_id, int(conversation))
        )
        found: list[route_pb2.ReadPosition] = []
        cursor, head = 0, 0
        for _ in range(READER_PAGES):
            page = await self.client.read_receipts(cid, cursor, min_position=position or 1)
            found += page.readers
            cursor, head = page.next_cursor, page.head_position
            if not cursor:
                break
        target = position or head
        if not target:
            self.system(f"{cid} has no messages yet")
            return
        readers = sorted(
            {r.user_id for r in found if r.position >= target and r.user_id != self.client.user_id}
        )
        names = ", ".join(f"{self._names.get(uid, '')}#{uid}" for uid in readers)
        partial = " (and maybe more: the scan stopped)" if cursor else ""
        self.system(
            f"{cid}: {len(readers)} read up to #{target}{partial}" + (f": {names}" if names else "")
        )

    def show_event(self, event: ClientEvent) -> None:
        self.system(event.text)
        if event.kind in (EventKind.KICKED, EventKind.GAVE_UP):
            self.error("disconnected for good; type :q! to quit")

    # --- input ----------------------------------------------------------------
    async def run(self) -> None:
        self.system(
            f"logged in as {self.client.user_name} (id {self.client.user_id}); "
            "type :all for commands, :q! to quit"
        )
        if self.interactive:
            session: PromptSession[str] = PromptSession()
            self.typing.attach(session)
            with patch_stdout(raw=True):
                await self._loop(
                    lambda: session.prompt_async(
                        [("class:prompt", f"{self.client.user_name}> ")], style=STYLE
                    )
                )
        else:
            await self._loop(self._read_stdin_line)

    async def _read_stdin_line(self) -> str:
        line: str = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            raise EOFError
        return line.rstrip("\n")

    async def _loop(self, read: Callable[[], Awaitable[str]]) -> None:
        while True:
            try:
                line = await read()
            except (EOFError, KeyboardInterrupt):
                break
            self.typing.line_submitted()
            try:
                command = commands.parse(str(line))
            except commands.CommandError as exc:
                self.error(str(exc))
                continue
            if command is None:
                continue
            if isinstance(command, commands.Quit):
                break
            try:
                await self.execute(command)
            except CimError as exc:
                self.error(exc.message)
        await self.shutdown()

    async def shutdown(self) -> None:
        for task in self._delayed:
            task.cancel()
        await asyncio.gather(*self._delayed, return_exceptions=True)
        await self.typing.aclose()
        await self.client.close()
        self.system("bye")

    async def execute(self, command: commands.Command) -> None:
        match command:
            case (
                commands.GroupMessage() | commands.PrivateMessage() | commands.MemberGroupMessage()
            ):
                await self.send(command)
            case commands.CreateGroup(name=name, member_ids=member_ids):
                made = await self.client.create_group(name, member_ids)
                self.system(
                    f"created group {made.group.group_id} {made.group.name!r} "
                    f"with {made.group.member_count} member(s)"
                )
            case commands.ChangeGroup(
                method=method, group_id=group_id, user_ids=ids, name=name, admin=admin
            ):
                fields: dict[str, object] = {"group_id": group_id}
                if method in ("SetAdmin", "TransferOwnership"):
                    fields["user_id"] = ids[0]
                elif ids:
                    fields["user_ids"] = list(ids)
                if admin is not None:
                    fields["admin"] = admin
                if name:
                    fields["name"] = name
                changed = await self.client.change_group(method, **fields)
                self.system(f"{group_id}: {changed.event.text}")
            case commands.ListMembers(group_id=group_id, after_user_id=after):
                page = await self.client.group_members(group_id, after)
                roles = {1: "owner", 2: "admin", 3: "member"}
                self.system(
                    f"group {group_id} {page.group.name!r}: {page.group.member_count} member(s)"
                    + (" (deleted)" if page.group.deleted else "")
                )
                for member in page.members:
                    self._print([("", f"  {member.user_id}  {roles.get(member.role, '?')}")])
                if page.more:
                    last = page.members[-1].user_id
                    self.system(f"more: :gmembers {group_id} {last}")
            case commands.ListGroups():
                mine = await self.client.my_groups()
                more = " (more follow)" if mine.more else ""
                self.system(f"{len(mine.groups)} group(s){more}")
                for group in mine.groups:
                    state = " (deleted)" if group.deleted else ""
                    self._print(
                        [("", f"  {group.group_id}  {group.name}  {group.member_count}{state}")]
                    )
            case commands.ShowHelp():
                width = max(len(syntax) for syntax, _ in commands.COMMANDS)
                for syntax, description in commands.COMMANDS:
                    self._print([("class:sender", syntax.ljust(width + 2)), ("", description)])
            case commands.ListOnline(prefix=prefix):
                users = await self.client.list_online(prefix)
                label = f" whose name starts with {prefix!r}" if prefix else ""
                self.system(f"{len(users)} user(s) online{label}:")
                for user in users:
                    self._print([("", f"  {user.user_id}  {user.user_name}")])
            case commands.ShowInfo():
                server = self.client.server
                where = f"{server.server_id} ({server.address})" if server else "no server"
                state = "connected" if self.client.connected else "not connected"
                self.system(
                    f"user {self.client.user_name} (id {self.client.user_id}), {state} to "
                    f"{where}, routes {', '.join(self.client.route.addresses)}, "
                    f"chat log {self.chatlog.user_dir}"
                )
            case commands.SearchLog(keyword=keyword):
                found = self.chatlog.search(keyword)
                self.system(f"{len(found)} line(s) in the chat log contain {keyword!r}")
                for day, line in found:
                    self._print([("class:time", f"{day} "), *highlight(line, keyword)])
            case commands.ShowEmoji(page=number):
                rows = emoji.page(number)
                self.system(f"emoji page {number} of {emoji.page_count()}:")
                for alias, char in rows:
                    self._print([("", f"  {char}  :{alias}:")])
            case commands.ShowHistory(peer_id=peer_id, before=before, group_id=group_id):
                await self.show_history(peer_id, before, group_id)
            case commands.ListConversations(more=more):
                await self.list_conversations(more)
            case commands.ShowReaders(conversation=conversation, position=position):
                await self.show_readers(conversation, position)
            case commands.DelayedMessage(message=message, seconds=seconds):
                task = asyncio.create_task(self._send_later(message, seconds))
                self._delayed.add(task)
                task.add_done_callback(self._delayed.discard)
                self.system(f"will send in {seconds:g} s")
            case _:
                self.error(f"cannot run {command!r}")

    async def show_history(self, peer_id: int, before: int, group_id: str = "") -> None:
        """One page of the conversation with ``peer_id`` (or of the group
        ``group_id``), oldest line first, and how to page further back."""
        if group_id:
            cid, target, title = group_id, group_id, f"group {group_id}"
            nothing = f"no messages in {group_id}"
        else:
            cid = conversations.private_id(self.client.user_id, peer_id)
            target, title = str(peer_id), f"conversation with #{peer_id}"
            nothing = f"no messages with #{peer_id}"
        page = await self.client.history(cid, before, HISTORY_LINES)
        if not page.messages:
            self.system(nothing + (" before that" if before else " yet"))
            return
        self.system(
            f"{title}, messages {page.messages[-1].position}"
            f"-{page.messages[0].position} of {page.head_position}:"
        )
        for message in reversed(page.messages):
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(message.server_time_ms / 1000))
            line: Fragments = [("class:time", f"  {message.position:>5} {stamp} ")]
            if message.kind == common_pb2.MESSAGE_KIND_MEMBERSHIP:
                line.append(("class:system", f"* {message.text}"))
            else:
                who = "me" if message.sender_id == self.client.user_id else message.sender_name
                line += [("class:sender", f"{who}: "), ("", message.text)]
            self._print(line)
        if page.more:
            self.system(f"older: :his {target} {page.messages[-1].position}")
        elif page.dropped_through_position:
            self.system(f"messages up to {page.dropped_through_position} are no longer kept")
        else:
            self.system("that is the beginning of the conversation")

    async def send(
        self,
        message: commands.GroupMessage | commands.PrivateMessage | commands.MemberGroupMessage,
    ) -> None:
        text = emoji.emojize(message.text)
        if isinstance(message, commands.MemberGroupMessage):
            result = await self.client.send_group(text, group_id=message.group_id)
            self.chatlog.append(f"me -> {message.group_id}: {text}")
            self.system(f"to {message.group_id}: stored for {result.recipients} member(s)")
        elif isinstance(message, commands.PrivateMessage):
            result = await self.client.send_private(message.receiver_id, text)
            cid = conversations.private_id(self.client.user_id, message.receiver_id)
            self._sent(cid, result.position, text)
            outcome = (
                "delivered"
                if result.status == common_pb2.DELIVERY_STATUS_DELIVERED
                else "stored: the user is offline and gets it on their next login"
            )
            self.chatlog.append(f"me -> #{message.receiver_id}: {text}")
            self.system(f"to #{message.receiver_id}: {outcome}")
        else:
            result = await self.client.send_group(text)
            self.chatlog.append(f"me -> all: {text}")
            self.system(f"sent to {result.recipients} online user(s)")

    async def _send_later(
        self,
        message: commands.GroupMessage | commands.PrivateMessage | commands.MemberGroupMessage,
        seconds: float,
    ) -> None:
        await asyncio.sleep(seconds)
        # The library raises only CimError; a cancellation (shutdown) ends the task.
        try:
            await self.send(message)
        except CimError as exc:
            self.error(f"delayed message not sent: {exc.message}")
