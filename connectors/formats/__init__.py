"""Streaming readers of partner formats."""
