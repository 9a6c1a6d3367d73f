"""The declarative flow registry (``flows.yaml``): one entry per flow, one DAG per entry.

Loading it reads one small YAML file and touches no database or network, so it is safe at DAG parse time.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from schemas.categories import CategorieDonnees
from spie_hub.core.errors import ConfigurationError
from spie_hub.core.home import REGISTRY_PATH


@dataclass(frozen=True)
class Base:
    """The ground on which a category may go to a recipient: a legal basis (with its article) or consent."""

    kind: str  # "legale" | "consentement"
    article: str | None = None
    #: A legal basis open to objection (RGPD art. 21: public-interest mission, 6.1.e): an active refusal or
    #: opposition of the person withholds the category. A legal obligation (6.1.c) is not.
    opposable: bool = False


@dataclass(frozen=True)
class Transport:
    type: str
    dossier: str
    motif: str = "*"


@dataclass(frozen=True)
class Recipient:
    id: str
    libelle: str
    sortie: str
    transport: Transport
    politique: dict[CategorieDonnees, Base]
    categories_requises: tuple[CategorieDonnees, ...]


@dataclass(frozen=True)
class Condition:
    champ: str
    egal: Any
    libelle: str


@dataclass(frozen=True)
class Flow:
    id: str
    titre: str
    finalite: str
    planification: str | None
    conservation_jours: int
    partenaire: str
    format: str
    mapping: str
    transport: Transport
    perimetre: tuple[Condition, ...]
    destinataires: tuple[Recipient, ...] = field(default_factory=tuple)
    responsable: str = "non renseigné"
    personnes_concernees: str = "non renseigné"
    transferts_hors_ue: str = "aucun"
    #: Counts sent to partners below this value are replaced by "< seuil" (see docs/consentement.md).
    seuil_petits_effectifs: int = 11


def _category(name: str, where: str) -> CategorieDonnees:
    try:
        return CategorieDonnees(name)
    except ValueError:
        known = ", ".join(c.value for c in CategorieDonnees)
        raise ConfigurationError(f"{where} : catégorie inconnue {name!r} (connues : {known})") from None


_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,79}$")


def _identifier(value: Any, where: str) -> str:
    """Flow, partner and recipient ids become folder and file names: a short list of characters only."""
    if not isinstance(value, str) or not _ID.match(value):
        raise ConfigurationError(f"{where} : identifiant {value!r} invalide (a-z, 0-9 et '-', 80 caractères au plus)")
    return value


def _recipient(flow_id: str, rid: str, spec: dict[str, Any]) -> Recipient:
    where = f"flows.yaml, flux {flow_id}, destinataire {rid}"
    _identifier(rid, where)
    politique: dict[CategorieDonnees, Base] = {}
    for name, rule in spec.get("politique", {}).items():
        cat = _category(name, where)
        base = Base(rule["base"], rule.get("article"), bool(rule.get("opposable", False)))
        if base.kind not in ("legale", "consentement"):
            raise ConfigurationError(f"{where} : base {base.kind!r} inconnue (legale ou consentement)")
        if base.kind == "legale" and not base.article:
            raise ConfigurationError(f"{where} : une base légale doit citer son article ({name})")
        if base.kind == "legale" and cat.categorie_particuliere:
            raise ConfigurationError(f"{where} : {name} est une catégorie particulière (art. 9 RGPD), consentement exprès requis")
        politique[cat] = base
    requises = tuple(_category(c, where) for c in spec.get("categories_requises", []))
    return Recipient(rid, spec.get("libelle", rid), spec["sortie"], Transport(**spec["transport"]), politique, requises)


def _flow(flow_id: str, spec: dict[str, Any]) -> Flow:
    source = spec["source"]
    _identifier(flow_id, "flows.yaml, flux")
    _identifier(source["partenaire"], f"flows.yaml, flux {flow_id}, partenaire source")
    return Flow(
        id=flow_id,
        titre=spec["titre"],
        finalite=spec["finalite"],
        planification=spec.get("planification"),
        conservation_jours=int(spec.get("conservation_jours", 730)),
        partenaire=source["partenaire"],
        format=source["format"],
        mapping=source["mapping"],
        transport=Transport(**source["transport"]),
        perimetre=tuple(Condition(**c) for c in spec.get("perimetre", [])),
        destinataires=tuple(_recipient(flow_id, rid, r) for rid, r in spec["destinataires"].items()),
        responsable=spec.get("responsable", "non renseigné"),
        personnes_concernees=spec.get("personnes_concernees", "non renseigné"),
        transferts_hors_ue=spec.get("transferts_hors_ue", "aucun"),
        seuil_petits_effectifs=int(spec.get("seuil_petits_effectifs", 11)),
    )


@lru_cache(maxsize=4)
def _read(path: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError:
        raise ConfigurationError(f"Registre des flux introuvable : {path} (variable SPIE_HUB_FLOWS)") from None


def _path(path: Path | None) -> Path:
    return path or Path(os.environ.get("SPIE_HUB_FLOWS", REGISTRY_PATH))


@lru_cache(maxsize=4)
def _load(path: Path) -> dict[str, Flow]:
    return {flow_id: _flow(flow_id, spec) for flow_id, spec in (_read(path).get("flux") or {}).items()}


def load_flows(path: Path | None = None) -> dict[str, Flow]:
    return _load(_path(path))


def organisation(path: Path | None = None) -> dict[str, str]:
    """The registry's ``organisation`` section (controller, DPO, security measures) for the art. 30 register."""
    return {k: str(v) for k, v in (_read(_path(path)).get("organisation") or {}).items()}


def get_flow(flow_id: str) -> Flow:
    flows = load_flows()
    if flow_id not in flows:
        raise ConfigurationError(f"Flux inconnu : {flow_id} (flux déclarés : {', '.join(sorted(flows))})")
    return flows[flow_id]
