"""Test support code (not tests): an in-memory transport."""
