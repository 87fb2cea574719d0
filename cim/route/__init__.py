"""The route: accounts, login, and the one place that routes, stores and pushes messages."""
