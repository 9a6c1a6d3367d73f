"""Formats by the names the registry declares: readers for inbound formats, output formats for deliveries.

Built-in formats are imported on first use; others (a partner's own, a test's toy) are added with
``register_reader`` / ``register_output`` — the run never changes.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from connectors.formats.base import OutputFormat, Reader
from spie_hub.core import home as _home
from spie_hub.core.errors import ConfigurationError

_BUILTIN_READERS: dict[str, str] = {
    "cnaf-vrsb0801": "connectors.formats.cnaf_vrsb:CnafReader",
    "ft-flux-mensuel": "connectors.formats.partner_csv:PartnerCsvReader",
    "cnaf-contacts": "connectors.formats.cnaf_contacts:CnafContactsReader",
    "cdb-csv": "connectors.formats.departement_csv:DepartementCsvReader",
    "ft-extract-spie": "connectors.formats.ft_extract:FtExtractReader",
    "webrsa-ali": "connectors.formats.webrsa_ali:WebrsaAliReader",
    "ali-webrsa": "connectors.formats.webrsa_ali:AliWebrsaReader",
    "jsonl": "connectors.formats.json_lines:JsonLinesReader",
}
_BUILTIN_OUTPUTS: dict[str, str] = {
    "csv": "connectors.formats.csv_output:CsvOutput",
    "webrsa-ali": "connectors.formats.webrsa_ali_output:WebrsaAliOutput",
    "ali-webrsa": "connectors.formats.webrsa_ali_output:AliWebrsaOutput",
    "jsonl": "connectors.formats.json_lines_output:JsonLinesOutput",
}
_READERS: dict[str, type[Reader]] = {}
_OUTPUTS: dict[str, type[OutputFormat]] = {}


def register_reader(cls: type[Reader]) -> type[Reader]:
    _READERS[cls.format] = cls
    return cls


def register_output(cls: type[OutputFormat]) -> type[OutputFormat]:
    _OUTPUTS[cls.format] = cls
    return cls


def unregister(name: str) -> None:
    _READERS.pop(name, None)
    _OUTPUTS.pop(name, None)


def known_readers() -> list[str]:
    return sorted(set(_BUILTIN_READERS) | set(_READERS))


def known_outputs() -> list[str]:
    return sorted(set(_BUILTIN_OUTPUTS) | set(_OUTPUTS))


def _resolve(name: str, registered: dict[str, Any], builtin: dict[str, str], kind: str) -> Any:
    if name in registered:
        return registered[name]
    if name not in builtin:
        known = ", ".join(sorted(set(builtin) | set(registered)))
        raise ConfigurationError(f"{kind} inconnu « {name} » (connus : {known})")
    module, _, attr = builtin[name].partition(":")
    registered[name] = getattr(importlib.import_module(module), attr)
    return registered[name]


def reader_class(name: str) -> type[Reader]:
    return _resolve(name, _READERS, _BUILTIN_READERS, "Format d'entrée")  # type: ignore[no-any-return]


def output_class(name: str) -> type[OutputFormat]:
    return _resolve(name, _OUTPUTS, _BUILTIN_OUTPUTS, "Format de sortie")  # type: ignore[no-any-return]


def output_spec(name: str, directory: Path | None = None) -> dict[str, Any]:
    """The YAML spec ``mappings/sorties/<name>.yaml``; ``name`` is an identifier, never a path."""
    from connectors.transports.base import safe_name

    directory = directory or _home.MAPPINGS_DIR / "sorties"
    path = directory / f"{safe_name(name)}.yaml"
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError:
        raise ConfigurationError(f"Format de sortie introuvable : {path}") from None
    if not isinstance(spec, dict):
        raise ConfigurationError(f"Format de sortie illisible : {path}")
    return spec


def load_output(name: str, directory: Path | None = None) -> OutputFormat:
    """The output format configured by ``mappings/sorties/<name>.yaml`` (its ``format`` key, ``csv`` by default)."""
    spec = output_spec(name, directory)
    return output_class(str(spec.get("format", "csv"))).from_spec(spec)  # type: ignore[attr-defined,no-any-return]
