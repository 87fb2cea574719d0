"""Service discovery: which chat servers and routes are alive."""

from cim.registry.base import Registry
from cim.registry.inprocess import InProcessRegistry
from cim.registry.static import StaticRegistry

__all__ = ["InProcessRegistry", "Registry", "StaticRegistry"]
