"""End-to-end tests: the real ``cim`` processes, driven as a user would."""
