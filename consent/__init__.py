"""Consent registry: FHIR R5 ``Consent`` import (pseudonymised on entry) and per-record decisions."""
