"""The cim client library."""
