"""Root conftest: fixtures live in tests/fixtures/ and are registered here."""

pytest_plugins = [
    "tests.fixtures.database",
    "tests.fixtures.servers",
    "tests.fixtures.logs",
    "tests.fixtures.garth_exchanges",
]
