"""SPIE interoperability hub: pipeline, pseudonymisation, store, audit and CLI."""

__version__ = "0.1.0"
