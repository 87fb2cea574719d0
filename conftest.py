# Fixture plugins shared by every test directory (pytest only honours
# pytest_plugins in the top-level conftest).
pytest_plugins = [
    "tests.fixtures.redis_server",
    "tests.fixtures.zookeeper_server",
]
