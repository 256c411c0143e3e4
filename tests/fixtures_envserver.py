"""Fixtures for the envserver tests (and any test that needs them)."""
