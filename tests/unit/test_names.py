"""The look-alike name rule: PRECIS UsernameCaseMapped, then UTS #39 skeletons."""

from __future__ import annotations

import pytest

from cim.core.names import canonical, name_keys, skeleton
from cim.errors import InvalidArgument

# Each row: a registered name, then names that must count as the same name.
SAME = [
    (
        "secA",
        [
            "SECA",
            "seca",
            "\uff33\uff25\uff23\uff21",
            "\uff53\uff45\uff43\uff41",
            "s\u0435cA",
            "\u0455ecA",
        ],
    ),  # case, width, Cyrillic
    ("ABE", ["\u0391\u0392\u0395", "abe"]),  # capital Greek alpha, beta, epsilon
    ("bob", ["b0b", "B0B", "b\u03bfb"]),  # digit zero, Greek omicron
    ("alice", ["a1ice", "aIice", "al\u0456ce"]),  # one, capital I, Cyrillic i
    ("paypal", ["p\u0430yp\u0430l", "PAYPAL"]),  # Cyrillic a
    ("café", ["cafe\u0301", "CAFÉ", "CAFE\u0301"]),  # precomposed and combining acute
    ("mary", ["rnary"]),  # the skeleton of m is rn
]
DIFFERENT = [
    ("secA", "secB"),
    ("café", "cafe"),  # a mark is a different name, not a look-alike
    ("alice", "alicia"),
    ("bob", "bobby"),
    ("\u03b1\u03b2\u03b5", "abe"),  # small Greek does not look like Latin
    ("user_1", "user-1"),
]


@pytest.mark.parametrize(("name", "alikes"), SAME, ids=[row[0] for row in SAME])
def test_look_alike_names_share_a_key(name: str, alikes: list[str]) -> None:
    for alike in alikes:
        assert name_keys(name) & name_keys(alike), (name, alike)


@pytest.mark.parametrize(("one", "other"), DIFFERENT)
def test_different_names_share_no_key(one: str, other: str) -> None:
    assert not name_keys(one) & name_keys(other)


def test_precis_maps_width_and_case_and_composes() -> None:
    assert canonical("\uff33\uff25\uff23\uff21") == "seca"
    assert canonical("CAFE\u0301") == "café"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("al ice", "spaces"),
        ("x\u200by", "ignorable"),
        ("", "empty"),
        ("tab\there", "controls"),
    ],
)
def test_names_precis_refuses_say_why(name: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        name_keys(name)
    assert reason in caught.value.message


def test_skeleton_follows_uts39() -> None:
    # NFD first, so a precomposed letter and its decomposition meet.
    assert skeleton("\u00e9") == skeleton("e\u0301")
    assert skeleton("\u0441") == "c"  # CYRILLIC SMALL LETTER ES
