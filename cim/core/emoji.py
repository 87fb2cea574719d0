"""Emoji aliases: the ``:alias:`` table, its pages, and replacing aliases in text."""

from __future__ import annotations

import re

from cim.core.commands import CommandError

PAGE_SIZE = 10

EMOJI: dict[str, str] = {
    "smile": "😄",
    "grin": "😁",
    "joy": "😂",
    "rofl": "🤣",
    "smiley": "😃",
    "laughing": "😆",
    "sweat_smile": "😅",
    "wink": "😉",
    "blush": "😊",
    "innocent": "😇",
    "slightly_smiling_face": "🙂",
    "upside_down_face": "🙃",
    "heart_eyes": "😍",
    "kissing_heart": "😘",
    "yum": "😋",
    "stuck_out_tongue": "😛",
    "stuck_out_tongue_winking_eye": "😜",
    "sunglasses": "😎",
    "nerd_face": "🤓",
    "thinking": "🤔",
    "hugs": "🤗",
    "shushing_face": "🤫",
    "neutral_face": "😐",
    "expressionless": "😑",
    "no_mouth": "😶",
    "smirk": "😏",
    "unamused": "😒",
    "roll_eyes": "🙄",
    "grimacing": "😬",
    "relieved": "😌",
    "pensive": "😔",
    "sleepy": "😪",
    "sleeping": "😴",
    "mask": "😷",
    "nauseated_face": "🤢",
    "sneezing_face": "🤧",
    "dizzy_face": "😵",
    "exploding_head": "🤯",
    "partying_face": "🥳",
    "confused": "😕",
    "worried": "😟",
    "open_mouth": "😮",
    "astonished": "😲",
    "flushed": "😳",
    "pleading_face": "🥺",
    "cry": "😢",
    "sob": "😭",
    "scream": "😱",
    "disappointed": "😞",
    "sweat": "😓",
    "weary": "😩",
    "yawning_face": "🥱",
    "rage": "😡",
    "angry": "😠",
    "skull": "💀",
    "poop": "💩",
    "clown_face": "🤡",
    "ghost": "👻",
    "alien": "👽",
    "robot": "🤖",
    "see_no_evil": "🙈",
    "thumbsup": "👍",
    "+1": "👍",
    "thumbsdown": "👎",
    "-1": "👎",
    "ok_hand": "👌",
    "v": "✌️",
    "crossed_fingers": "🤞",
    "wave": "👋",
    "clap": "👏",
    "raised_hands": "🙌",
    "pray": "🙏",
    "handshake": "🤝",
    "muscle": "💪",
    "point_up": "☝️",
    "point_right": "👉",
    "facepalm": "🤦",
    "shrug": "🤷",
    "eyes": "👀",
    "heart": "❤️",
    "orange_heart": "🧡",
    "yellow_heart": "💛",
    "green_heart": "💚",
    "blue_heart": "💙",
    "purple_heart": "💜",
    "black_heart": "🖤",
    "broken_heart": "💔",
    "sparkling_heart": "💖",
    "100": "💯",
    "fire": "🔥",
    "sparkles": "✨",
    "star": "⭐",
    "zap": "⚡",
    "boom": "💥",
    "tada": "🎉",
    "confetti_ball": "🎊",
    "gift": "🎁",
    "balloon": "🎈",
    "birthday": "🎂",
    "trophy": "🏆",
    "rocket": "🚀",
    "coffee": "☕",
    "tea": "🍵",
    "beer": "🍺",
    "beers": "🍻",
    "wine_glass": "🍷",
    "pizza": "🍕",
    "hamburger": "🍔",
    "cake": "🍰",
    "apple": "🍎",
    "sunny": "☀️",
    "cloud": "☁️",
    "umbrella": "☔",
    "snowflake": "❄️",
    "rainbow": "🌈",
    "crescent_moon": "🌙",
    "earth_asia": "🌏",
    "rose": "🌹",
    "cherry_blossom": "🌸",
    "four_leaf_clover": "🍀",
    "dog": "🐶",
    "cat": "🐱",
    "panda_face": "🐼",
    "unicorn": "🦄",
    "bug": "🐛",
    "computer": "💻",
    "phone": "📱",
    "bulb": "💡",
    "lock": "🔒",
    "key": "🔑",
    "bell": "🔔",
    "memo": "📝",
    "email": "📧",
    "hourglass": "⌛",
    "alarm_clock": "⏰",
    "white_check_mark": "✅",
    "x": "❌",
    "warning": "⚠️",
    "question": "❓",
    "exclamation": "❗",
    "zzz": "💤",
}

_ALIAS = re.compile(r":([a-z0-9_+\-]+):")


def page_count() -> int:
    """How many pages of PAGE_SIZE aliases the table has."""
    return -(-len(EMOJI) // PAGE_SIZE)


def page(number: int) -> list[tuple[str, str]]:
    """The (alias, emoji) rows of 1-based page ``number``."""
    count = page_count()
    if not 1 <= number <= count:
        raise CommandError(f"no emoji page {number}; pages are 1 to {count}")
    start = (number - 1) * PAGE_SIZE
    return list(EMOJI.items())[start : start + PAGE_SIZE]


def emojize(text: str) -> str:
    """``text`` with every known ``:alias:`` replaced by its emoji."""
    out: list[str] = []
    position = 0
    while (match := _ALIAS.search(text, position)) is not None:
        emoji = EMOJI.get(match.group(1))
        if emoji is None:
            # Resume at the closing colon: in ":foo:smile:" it opens ":smile:".
            out.append(text[position : match.end() - 1])
            position = match.end() - 1
        else:
            out.append(text[position : match.start()])
            out.append(emoji)
            position = match.end()
    out.append(text[position:])
    return "".join(out)
