"""Fixtures for the images tests (and any test that needs them)."""
