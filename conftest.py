import os

# gRPC's fork handlers restart its poller in a forked child; a child that
# closes its inherited descriptors before exec (subprocess, pexpect) can then
# die with "epoll_wait: Bad file descriptor" before it runs (grpc/grpc#43055,
# seen twice in this suite: a console and a cim dev that never started).
# Every child here execs at once and needs no gRPC state from the parent.
# Read when grpc is first imported and initialised: set before any test module.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

# Fixture plugins shared by every test directory (pytest only honours
# pytest_plugins in the top-level conftest).
pytest_plugins = [
    "tests.fixtures.redis_server",
    "tests.fixtures.zookeeper_server",
]
