"""Where the route keeps accounts, login state, routes and offline messages."""

from cim.store.base import Account, SessionRecord, Store
from cim.store.memory import MemoryStore

__all__ = ["Account", "MemoryStore", "SessionRecord", "Store"]
