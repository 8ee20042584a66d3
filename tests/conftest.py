"""Shared test fixtures. Fixtures that belong to one area live in that area's conftest.py."""
