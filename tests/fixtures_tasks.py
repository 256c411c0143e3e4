"""Fixtures for the tasks tests (and any test that needs them)."""
