"""Composition: the worker loop, admission, status writing and reconciliation wired to adapters."""
