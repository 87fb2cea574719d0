"""The benchmark harness (`cim bench`, `make bench`): cim's scenarios and the
bare-gRPC ceilings they are compared with, each part in its own process."""
