"""cim: a distributed instant-messaging system on gRPC."""

__version__ = "0.1.0"
