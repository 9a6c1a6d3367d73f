"""The transports the registry may name, by ``type``: built-in ones are imported only when first used, and any
other (a partner's own, a test's toy) is added with ``register_transport`` — the run never changes."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from connectors.transports.base import Transport, TransportOptions
from spie_hub.core.errors import ConfigurationError
from spie_hub.core.home import HubHome

#: type → "module:Class", imported on first use.
_BUILTIN: dict[str, str] = {
    "dossier-local": "connectors.transports.local:LocalFolder",
    "sftp": "connectors.transports.sftp:SftpFolder",
    "api-https": "connectors.transports.api_landing:ApiLanding",
}
_REGISTERED: dict[str, type[Transport]] = {}


def register_transport(cls: type[Transport]) -> type[Transport]:
    """Make ``cls`` available under ``cls.type`` (usable as a class decorator)."""
    _REGISTERED[cls.type] = cls
    return cls


def unregister_transport(type_name: str) -> None:
    _REGISTERED.pop(type_name, None)


def known_transports() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def transport_class(type_name: str) -> type[Transport]:
    if type_name in _REGISTERED:
        return _REGISTERED[type_name]
    if type_name not in _BUILTIN:
        raise KeyError(type_name)
    module, _, name = _BUILTIN[type_name].partition(":")
    cls: type[Transport] = getattr(importlib.import_module(module), name)
    _REGISTERED[type_name] = cls
    return cls


def french_errors(error: ValidationError) -> str:
    """pydantic's errors in French, naming each key (never echoing the value: it could be a secret)."""
    parts = []
    for item in error.errors(include_input=False, include_url=False):
        key = ".".join(str(p) for p in item["loc"]) or "(racine)"
        kind = item["type"]
        if kind == "extra_forbidden":
            parts.append(f"clé inconnue « {key} »")
        elif kind == "missing":
            parts.append(f"clé « {key} » manquante")
        elif kind.startswith(("string_type", "int_", "bool_", "float_", "dict_", "list_", "model_type")):
            parts.append(f"clé « {key} » : type invalide ({kind.split('_', 1)[0]} attendu)")
        else:
            message = str(item.get("msg", kind)).removeprefix("Value error, ")
            parts.append(f"clé « {key} » : {message}")
    return " ; ".join(parts)


def parse_transport(spec: Any, where: str) -> TransportOptions:
    """Validate a ``transport:`` block of ``flows.yaml``; ``ConfigurationError`` names the place and the key."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("type"), str):
        raise ConfigurationError(f"{where} : transport sans « type » (connus : {', '.join(known_transports())})")
    try:
        cls = transport_class(spec["type"])
    except KeyError:
        raise ConfigurationError(f"{where} : type de transport inconnu « {spec['type']} » "
                                 f"(connus : {', '.join(known_transports())})") from None
    try:
        return cls.Options.model_validate(dict(spec))
    except ValidationError as error:
        raise ConfigurationError(f"{where}, transport {spec['type']} : {french_errors(error)}") from None


def open_transport(options: TransportOptions, home: HubHome) -> Transport:
    """The transport an options block describes, ready to use (connections are opened lazily by the transport)."""
    return transport_class(options.type).from_options(options, home)  # type: ignore[attr-defined]
