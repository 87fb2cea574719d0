from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from cim.client.chatlog import ChatLog, highlight


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


def make_log(tmp_path: Path, user: str = "alice") -> tuple[ChatLog, FakeClock]:
    clock = FakeClock(datetime(2024, 5, 1, 23, 59, 58))
    return ChatLog(tmp_path / "logs", user, clock=clock), clock


def test_append_writes_timestamped_line_to_day_file(tmp_path: Path) -> None:
    log, _ = make_log(tmp_path)
    log.append("hello")
    log.append("world")
    assert log.user_dir == tmp_path / "logs" / "alice"
    path = log.user_dir / "2024-05-01.log"
    assert path.read_text(encoding="utf-8") == "23:59:58 hello\n23:59:58 world\n"


def test_day_rollover_starts_new_file(tmp_path: Path) -> None:
    log, clock = make_log(tmp_path)
    log.append("before midnight")
    clock.advance(seconds=3)
    log.append("after midnight")
    assert sorted(p.name for p in log.user_dir.iterdir()) == ["2024-05-01.log", "2024-05-02.log"]
    day2 = (log.user_dir / "2024-05-02.log").read_text(encoding="utf-8")
    assert day2 == "00:00:01 after midnight\n"


def test_newlines_inside_line_become_spaces(tmp_path: Path) -> None:
    log, _ = make_log(tmp_path)
    log.append("a\nb\r\nc\rd")
    assert log.search("a") == [("2024-05-01", "23:59:58 a b c d")]


def test_utf8_content(tmp_path: Path) -> None:
    log, _ = make_log(tmp_path)
    log.append("你好 😄")
    assert log.search("你好") == [("2024-05-01", "23:59:58 你好 😄")]


def test_search_across_days_oldest_first(tmp_path: Path) -> None:
    log, clock = make_log(tmp_path)
    log.append("[bob] hello day one")
    log.append("unrelated")
    clock.advance(days=1)
    log.append("[bob] HELLO day two")
    assert log.search("hello") == [
        ("2024-05-01", "23:59:58 [bob] hello day one"),
        ("2024-05-02", "23:59:58 [bob] HELLO day two"),
    ]


def test_search_is_case_insensitive(tmp_path: Path) -> None:
    log, _ = make_log(tmp_path)
    log.append("Hello World")
    assert log.search("hELLO wORLD") == [("2024-05-01", "23:59:58 Hello World")]
    assert log.search("absent") == []


def test_search_treats_keyword_literally(tmp_path: Path) -> None:
    log, _ = make_log(tmp_path)
    log.append("price (approx) $5.00")
    log.append("price approx 5x00")
    assert log.search("(approx) $5.") == [("2024-05-01", "23:59:58 price (approx) $5.00")]


def test_search_limit_keeps_most_recent(tmp_path: Path) -> None:
    log, clock = make_log(tmp_path)
    for i in range(5):
        log.append(f"msg {i}")
        clock.advance(days=1)
    assert log.search("msg", limit=2) == [
        ("2024-05-04", "23:59:58 msg 3"),
        ("2024-05-05", "23:59:58 msg 4"),
    ]
    assert log.search("msg", limit=0) == []
    assert len(log.search("msg")) == 5


def test_search_without_directory_is_empty(tmp_path: Path) -> None:
    log, _ = make_log(tmp_path)
    assert log.search("anything") == []


def test_search_ignores_foreign_files(tmp_path: Path) -> None:
    log, _ = make_log(tmp_path)
    log.append("mine")
    (log.user_dir / "notes.txt").write_text("mine too\n", encoding="utf-8")
    assert log.search("mine") == [("2024-05-01", "23:59:58 mine")]


def test_logs_are_per_user(tmp_path: Path) -> None:
    alice, _ = make_log(tmp_path, "alice")
    bob, _ = make_log(tmp_path, "bob")
    alice.append("secret")
    assert bob.search("secret") == []
    assert alice.search("secret") != []


def test_user_dir_is_sanitised(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    for name in ["../evil", "a/b\\c", "..", ".", "", "x y:z"]:
        log = ChatLog(root, name, clock=lambda: datetime(2024, 1, 1))
        assert log.user_dir.parent == root
        assert not log.user_dir.name.startswith(".")
        assert "/" not in log.user_dir.name and "\\" not in log.user_dir.name
        log.append("ok")
        assert (log.user_dir / "2024-01-01.log").is_file()
    assert ChatLog(root, "x y:z").user_dir.name == "x_y_z"
    assert ChatLog(root, "小明").user_dir.name == "小明"


def test_default_clock_uses_local_time(tmp_path: Path) -> None:
    log = ChatLog(tmp_path, "carol")
    before = datetime.now()
    log.append("now")
    [(day, _)] = log.search("now")
    assert day in {before.strftime("%Y-%m-%d"), datetime.now().strftime("%Y-%m-%d")}


def test_highlight_fragments() -> None:
    assert highlight("Hello hello world", "HELLO") == [
        ("class:highlight", "Hello"),
        ("", " "),
        ("class:highlight", "hello"),
        ("", " world"),
    ]


def test_highlight_no_match_and_empty_keyword() -> None:
    assert highlight("abc", "x") == [("", "abc")]
    assert highlight("abc", "") == [("", "abc")]


def test_highlight_match_at_end_and_literal_keyword() -> None:
    assert highlight("cost 5.0", "5.0") == [("", "cost "), ("class:highlight", "5.0")]
    assert highlight("a.b", ".") == [("", "a"), ("class:highlight", "."), ("", "b")]


def test_highlight_fragments_rebuild_line() -> None:
    line = "ababab"
    fragments = highlight(line, "ab")
    assert "".join(text for _, text in fragments) == line
    assert [style for style, _ in fragments] == ["class:highlight"] * 3
