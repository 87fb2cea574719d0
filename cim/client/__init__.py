"""The cim client library."""

from cim.client.client import CimClient, ClientEvent, EventKind
from cim.client.route import RouteClient

__all__ = ["CimClient", "ClientEvent", "EventKind", "RouteClient"]
