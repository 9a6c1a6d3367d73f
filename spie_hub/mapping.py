"""Declarative mappings (``mappings/*.yaml``) compiled into fast per-record functions.

A mapping names, for each field of the shared schema (dotted path), where its value lies in the partner record
and which transformation applies, picked from a short list. Adding a partner means writing such a file, not code.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from lxml import etree

from schemas.codes import cnaf_labels
from spie_hub.errors import ConfigurationError, RecordError
from spie_hub.nir import normaliser_nir

MAPPINGS_DIR = Path(__file__).resolve().parent.parent / "mappings"

Element = etree._Element
Getter = Callable[[Element, Element], Any]  # (record element, parent element) -> value


def _text_getter(path: str) -> Callable[[Element, Element], str | None]:
    on_parent = path.startswith("foyer:")
    path = path.removeprefix("foyer:")
    if "[" in path and "/" in path.split("[", 1)[1].split("]", 1)[0]:
        xpath = etree.XPath(f"{path}/text()")  # nested predicates need real XPath; ElementPath is faster otherwise

        def by_xpath(record: Element, parent: Element) -> str | None:
            found = xpath(parent if on_parent else record)
            return found[0].strip() or None if found else None

        return by_xpath

    def by_path(record: Element, parent: Element) -> str | None:
        text = (parent if on_parent else record).findtext(path)
        return text.strip() or None if text is not None else None

    return by_path


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise RecordError("date invalide (format attendu AAAA-MM-JJ)") from None


def _bool(text: str) -> bool:
    if text in ("1", "true", "O", "OUI"):
        return True
    if text in ("0", "false", "N", "NON"):
        return False
    raise RecordError("booléen invalide (attendu 0 ou 1)")


def _code_label(liste: str) -> Callable[[str], str | None]:
    labels = cnaf_labels().get(liste)
    if labels is None:
        raise ConfigurationError(f"Liste de codes CNAF inconnue dans un mapping : {liste}")
    return labels.get


_SCALAR_TRANSFORMS: dict[str, Callable[[str], Any]] = {
    "texte": lambda text: text,
    "date": _date,
    "booleen": _bool,
    "nir": normaliser_nir,
}


def _compile_field(name: str, spec: Any) -> Getter:
    if isinstance(spec, str):
        spec = {"chemin": spec}
    if not isinstance(spec, dict):
        raise ConfigurationError(f"Mapping : champ {name} mal décrit")
    if "repeter" in spec:
        return _compile_repeat(name, spec)
    if "elements" in spec:
        return _compile_elements(name, spec)
    transform = spec.get("transformation", "texte")
    default = spec.get("defaut")
    if "chemins" in spec:
        getters = [_text_getter(p) for p in spec["chemins"]]
        if transform == "liste":
            return lambda r, p: [v for g in getters if (v := g(r, p)) is not None]
        if transform == "joindre":
            sep = spec.get("separateur", ":")
            return lambda r, p: sep.join(v for g in getters if (v := g(r, p)) is not None) or None
        raise ConfigurationError(f"Mapping : {name} a plusieurs chemins, transformation 'liste' ou 'joindre' attendue")
    getter = _text_getter(spec["chemin"])
    if transform.startswith("code:"):
        convert = _code_label(transform.removeprefix("code:"))
    elif transform in _SCALAR_TRANSFORMS:
        convert = _SCALAR_TRANSFORMS[transform]
    else:
        raise ConfigurationError(f"Mapping : transformation inconnue {transform!r} pour {name}")

    def get(record: Element, parent: Element) -> Any:
        text = getter(record, parent)
        if text is None:
            return default
        try:
            return convert(text)
        except RecordError as error:
            raise RecordError(f"{name} : {error}") from None

    return get


def _compile_repeat(name: str, spec: dict[str, Any]) -> Getter:
    path: str = spec["repeter"]
    on_parent = path.startswith("foyer:")
    path = path.removeprefix("foyer:")
    fields = {key: _compile_field(f"{name}.{key}", sub) for key, sub in spec["champs"].items()}

    def get(record: Element, parent: Element) -> list[dict[str, Any]]:
        return [
            {key: g(item, parent) for key, g in fields.items()}
            for item in (parent if on_parent else record).iterfind(path)
        ]

    return get


def _compile_elements(name: str, spec: dict[str, Any]) -> Getter:
    items = [(item["systeme"], _compile_field(f"{name}.{item['systeme']}", item["valeur"])) for item in spec["elements"]]

    def get(record: Element, parent: Element) -> list[dict[str, Any]]:
        return [{"systeme": s, "valeur": v} for s, g in items if (v := g(record, parent)) is not None]

    return get


@dataclass
class CompiledMapping:
    name: str
    format: str
    record_tag: str
    fields: list[tuple[tuple[str, ...], Getter]]
    nir: Getter
    fallback: list[Getter]

    def map(self, record: Element, parent: Element) -> dict[str, Any]:
        """Return the nested dict of shared-schema fields; raise ``RecordError`` with a readable reason."""
        out: dict[str, Any] = {}
        for path, getter in self.fields:
            value = getter(record, parent)
            if value is None or value == []:
                continue
            target = out
            for part in path[:-1]:
                target = target.setdefault(part, {})
            target[path[-1]] = value
        return out

    def fallback_parts(self, record: Element, parent: Element) -> list[str] | None:
        parts = [g(record, parent) for g in self.fallback]
        return None if any(p is None for p in parts) else parts

    def records(self, parent: Element) -> list[Element]:
        return parent.findall(self.record_tag)


def load_mapping(name: str, directory: Path = MAPPINGS_DIR) -> CompiledMapping:
    path = directory / f"{name}.yaml"
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError:
        raise ConfigurationError(f"Mapping introuvable : {path}") from None
    fields = [(tuple(key.split(".")), _compile_field(key, value)) for key, value in spec["champs"].items()]
    return CompiledMapping(
        name=spec["mapping"],
        format=spec["format"],
        record_tag=spec["enregistrement"],
        fields=fields,
        nir=_text_getter(spec["pivot"]["nir"]),
        fallback=[_text_getter(p) for p in spec["pivot"].get("repli", [])],
    )
