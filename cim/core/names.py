"""When two user names are the same name: the rule that keeps look-alike
names apart (pure).

A name a user registers is kept exactly as typed (it is what others see),
but it is compared with every existing name through its *key*:

1. PRECIS ``UsernameCaseMapped`` (RFC 8265, as XMPP uses it): full-width
   letters map to their ASCII forms, case folds to lower case, the result is
   NFC-normalised, and names with spaces, controls or invisible characters
   are refused. ``secA``, ``SECA`` and ``secA`` in full-width letters
   become ``seca``.
2. The confusable *skeleton* of that (Unicode UTS #39, section 4): every
   character is replaced by the prototype it can be confused with, per
   Unicode's ``confusables.txt`` (``cim/core/data/confusables.txt``).
   ``secA`` with a Cyrillic small ie for the ``e`` becomes ``seca`` too. The
   skeleton is folded to lower case and taken again, since prototypes can be
   capitals (``0`` is confused with ``O``), and it is taken of the name as
   typed as well (capital Greek alpha, beta, epsilon look like ``ABE``; in
   lower case they do not look like ``abe``).

Two names that share a key are the same name: the second is refused at
registration. Names registered before this rule keep working as they are,
even where two of them now share a key (see ``docs/design/names.md``).
"""

from __future__ import annotations

import functools
import importlib.resources
import unicodedata

from precis_i18n import get_profile

from cim.errors import InvalidArgument

_PROFILE = get_profile("UsernameCaseMapped")


def canonical(name: str) -> str:
    """The name after PRECIS UsernameCaseMapped; InvalidArgument, saying why,
    for a name the profile refuses."""
    try:
        return str(_PROFILE.enforce(name))
    except UnicodeEncodeError as exc:
        reason = exc.reason.partition("/")[2] or exc.reason
        raise InvalidArgument(
            f"user name {name!r} is not allowed: {reason.replace('_', ' ')}"
            + (f" at character {exc.start + 1}" if exc.start < len(name) else "")
        ) from None


@functools.cache
def _prototypes() -> dict[str, str]:
    """confusables.txt as {character: prototype}: each line maps one code
    point to a sequence, in hex (``0441 0063``: Cyrillic small es to ``c``)."""
    source = importlib.resources.files("cim.core") / "data" / "confusables.txt"
    table: dict[str, str] = {}
    for line in source.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            code, *prototype = line.split()
            table[chr(int(code, 16))] = "".join(chr(int(cp, 16)) for cp in prototype)
    return table


def skeleton(text: str) -> str:
    """UTS #39 skeleton: NFD, each character to its prototype, NFD again."""
    prototypes = _prototypes()
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFD", "".join(prototypes.get(ch, ch) for ch in decomposed))


def _folded_skeleton(text: str) -> str:
    # Prototypes can be capitals (``0`` is confused with ``O``): fold and go again.
    return skeleton(skeleton(text).casefold())


def name_keys(name: str) -> frozenset[str]:
    """What a name is compared by: two names that share a key are the same
    name. The folded skeleton of its PRECIS form, and of the name as typed
    (PRECIS lower-cases first, and capital Greek letters look like Latin ones
    where small ones do not). InvalidArgument for a name PRECIS refuses."""
    return frozenset(
        (
            _folded_skeleton(canonical(name)),
            _folded_skeleton(unicodedata.normalize("NFC", name)),
        )
    )


def existing_name_keys(name: str) -> frozenset[str]:
    """The keys an existing account's name is indexed under: its
    :func:`name_keys`; for a name registered before this rule that PRECIS
    refuses (it cannot be registered again), the key of the name as typed,
    so new look-alikes of it are still refused."""
    try:
        return name_keys(name)
    except InvalidArgument:
        return frozenset((_folded_skeleton(unicodedata.normalize("NFC", name)),))
