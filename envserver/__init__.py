"""The environment server: one sandboxed container per environment, four tools over HTTP.

Standalone: imports nothing from the other Forager packages.
"""
