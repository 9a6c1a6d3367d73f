"""The declarative flow registry (``flows.yaml``): one entry per flow, one DAG per entry.

The registry is validated as data when it is loaded: every block (flow, source, recipient, policy rule, perimeter
condition, the ``organisation`` section) is a pydantic model that refuses unknown keys, every ``transport:`` block
is validated by its transport (``connectors.transports.registry.parse_transport``), the source format must be a
known reader, its mapping must exist and fit the format and the schema's major version, and each recipient's
output spec must exist and name a known output format. Every refusal is a ``ConfigurationError`` in French naming
the file, the flow (and recipient) and the key — never a value that could be a secret.

Loading reads small YAML files and touches no database or network, so it is safe at DAG parse time.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import types
import typing
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.formats import registry as formats
from connectors.transports import registry as transports
from connectors.transports.base import TransportOptions
from schemas.categories import CHAMPS_FOYER, CategorieDonnees
from schemas.spie_v1 import SCHEMA_VERSION, PersonneSPIE
from spie_hub.core import home as _home
from spie_hub.core.errors import ConfigurationError

# -- what the rest of the hub reads -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    """The ground on which a category may go to a recipient: a legal basis (with its article) or consent."""

    kind: str  # "legale" | "consentement"
    article: str | None = None
    #: A legal basis open to objection (RGPD art. 21: public-interest mission, 6.1.e): an active refusal or
    #: opposition of the person withholds the category. A legal obligation (6.1.c) is not.
    opposable: bool = False


@dataclass(frozen=True)
class Recipient:
    id: str
    libelle: str
    sortie: str
    #: Where deliveries go (validated options of the transport named by ``type``).
    transport: TransportOptions
    politique: dict[CategorieDonnees, Base]
    categories_requises: tuple[CategorieDonnees, ...]
    #: Household fields (``schemas.categories.CHAMPS_FOYER``) the recipient needs; all others are withheld from it,
    #: so that two recipients cannot join their rows by what the members of a household share.
    champs_foyer: frozenset[str] = frozenset()


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
    #: Where the partner's files are read (``source.transport``).
    transport: TransportOptions
    perimetre: tuple[Condition, ...]
    destinataires: tuple[Recipient, ...] = field(default_factory=tuple)
    responsable: str = "non renseigné"
    personnes_concernees: str = "non renseigné"
    transferts_hors_ue: str = "aucun"
    #: Counts sent to partners below this value are replaced by "< seuil" (see docs/consentement.md).
    seuil_petits_effectifs: int = 11
    #: Where rejection reports and acknowledgements go back to the sender (``source.retour``; by default the
    #: local folder ``outbox/<partenaire>``). ``None`` only for a Flow built by hand.
    retour: TransportOptions | None = None


# -- the blocks of flows.yaml, as data ----------------------------------------------------------------------------

PositiveInt = Annotated[int, Field(gt=0)]


class _Block(BaseModel):
    # Strict: YAML already gives native types; "730" for a number of days or "yes" for a boolean is a mistake.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RuleSpec(_Block):
    """One entry of a recipient's ``politique``: ``{base: legale, article: "…", opposable: true}``."""

    base: str
    article: str | None = None
    opposable: bool = False


class ConditionSpec(_Block):
    """One perimeter condition: records whose ``champ`` is not ``egal`` are outside the flow."""

    champ: str
    egal: Any
    libelle: str


class SourceSpec(_Block):
    partenaire: str
    format: str
    mapping: str
    transport: dict[str, Any]
    #: Where rejection reports and acknowledgements go back to the sender (default: outbox/<partenaire>).
    retour: dict[str, Any] | None = None


class RecipientSpec(_Block):
    libelle: str | None = None
    sortie: str
    transport: dict[str, Any]
    politique: dict[str, RuleSpec] = Field(default_factory=dict)
    categories_requises: list[str] = Field(default_factory=list)
    champs_foyer: list[str] = Field(default_factory=list)


class FlowSpec(_Block):
    titre: str
    finalite: str
    responsable: str = "non renseigné"
    personnes_concernees: str = "non renseigné"
    transferts_hors_ue: str = "aucun"
    planification: str | None = None
    conservation_jours: PositiveInt = 730
    seuil_petits_effectifs: Annotated[int, Field(ge=0)] = 11
    source: SourceSpec
    perimetre: list[ConditionSpec] = Field(default_factory=list)
    destinataires: dict[str, RecipientSpec]


class OrganisationSpec(_Block):
    """The controller's facts for the art. 30 register."""

    nom: str | None = None
    contact: str | None = None
    dpo: str | None = None
    conservation_journal_jours: PositiveInt | None = None
    #: Retention of the hub's own stores, in days (defaults and meaning: spie_hub/run/retention.py StoreRetention).
    conservation_consentements_jours: PositiveInt | None = None
    conservation_retraits_jours: PositiveInt | None = None
    conservation_executions_jours: PositiveInt | None = None
    conservation_exports_jours: PositiveInt | None = None
    conservation_preparation_jours: PositiveInt | None = None
    mesures_securite: str | None = None


class ConsentIssuerSpec(_Block):
    """One partner allowed to send consents and oppositions (``consentements.emetteurs.<partenaire>``)."""

    #: The consent inbox it sends through: the issuer of a file is the inbox it came from, never a free string.
    boite: dict[str, Any]
    #: Recipients and categories for which it collects consents (the collecting body): its permits outside
    #: them are refused. Its refusals and oppositions are accepted for any recipient (they only restrict).
    recueille: dict[str, list[str]] = Field(default_factory=dict)


class ConsentSectionSpec(_Block):
    #: Purpose codes (system .../CodeSystem/finalite) of the hub's flows: a permit stating another purpose
    #: does not apply to them.
    finalites: list[str] = Field(default_factory=list)
    emetteurs: dict[str, ConsentIssuerSpec] = Field(default_factory=dict)


class RegistrySpec(_Block):
    organisation: OrganisationSpec | None = None
    #: Flows are validated one by one (so that a refusal names its flow).
    flux: dict[str, Any] | None = None
    #: Who may send consents, through which inbox, for which recipients and categories (validated after flows).
    consentements: dict[str, Any] | None = None


# -- French messages ----------------------------------------------------------------------------------------------

_TYPES = {
    "string_type": "texte attendu",
    "int_type": "nombre entier attendu",
    "int_parsing": "nombre entier attendu",
    "int_from_float": "nombre entier attendu",
    "bool_type": "booléen attendu (true ou false)",
    "bool_parsing": "booléen attendu (true ou false)",
    "dict_type": "dictionnaire (clé: valeur) attendu",
    "model_type": "dictionnaire (clé: valeur) attendu",
    "model_attributes_type": "dictionnaire (clé: valeur) attendu",
    "list_type": "liste attendue",
}


def _problem(item: Mapping[str, Any], key: str) -> str:
    """One pydantic error in French, naming the key; the input value is never shown (it could be a secret)."""
    kind = item["type"]
    ctx = item.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"clé inconnue « {key} »"
    if kind == "missing":
        return f"clé « {key} » manquante"
    if kind in _TYPES:
        text = _TYPES[kind]
    elif kind in ("greater_than", "greater_than_equal"):
        text = f"nombre {'supérieur' if kind == 'greater_than' else 'supérieur ou égal'} à {ctx.get('gt', ctx.get('ge'))} attendu"
    elif kind == "value_error":
        text = str(item.get("msg", "")).removeprefix("Value error, ")
    else:
        text = f"valeur invalide ({kind})"
    return f"clé « {key} » : {text}" if key else text


def _shown(name: Any) -> str:
    """A YAML key as a message shows it: as is when it is a clean identifier, quoted (escaped) otherwise."""
    return name if isinstance(name, str) and _ID.match(name) else repr(name)


def _errors(error: ValidationError, where: str, *, flow: bool) -> ConfigurationError:
    """Validation errors, each under the place it concerns (in a flow: source, recipient, perimeter condition)."""
    lines: dict[str, list[str]] = {}
    for item in error.errors(include_input=False, include_url=False):
        loc = list(item["loc"])
        place = where
        if not flow:
            pass
        elif loc[:1] == ["source"] and len(loc) > 1:
            place, loc = f"{where}, source", loc[1:]
        elif loc[:1] == ["destinataires"] and len(loc) > 1:
            place, loc = f"{where}, destinataire {_shown(loc[1])}", loc[2:]
        elif loc[:1] == ["perimetre"] and len(loc) > 1 and isinstance(loc[1], int):
            place, loc = f"{where}, périmètre (condition n° {loc[1] + 1})", loc[2:]
        key = ".".join(str(p) for p in loc if p != "[key]")
        lines.setdefault(place, []).append(_problem(item, key))
    return ConfigurationError("\n".join(f"{place} : {' ; '.join(problems)}" for place, problems in lines.items()))


def _validate(model: type[_Block], data: Any, where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise _errors(error, where, flow=model is FlowSpec) from None


# -- checks beyond the shape --------------------------------------------------------------------------------------

#: Flow, partner and recipient ids become folder and file names: a short list of characters only.
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,79}$")
#: Mapping and output spec names are file names of mappings/ (without ``.yaml``): never a path.
_FILE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,79}$")
_MAJOR = re.compile(r"^(\d+)\.")


def _identifier(value: Any, where: str, key: str | None = None) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        at = f"clé « {key} » : " if key else ""
        raise ConfigurationError(f"{where} : {at}identifiant {value!r} invalide (a-z, 0-9 et '-', 80 caractères au plus)")
    return value


def _file_name(value: str, where: str, key: str, kind: str) -> str:
    if not _FILE_ID.match(value):
        raise ConfigurationError(f"{where} : clé « {key} » : nom de {kind} {value!r} invalide (un nom de fichier sans "
                                 "extension : a-z, 0-9, '_' et '-', jamais un chemin)")
    return value


def _category(name: str, where: str) -> CategorieDonnees:
    try:
        return CategorieDonnees(name)
    except ValueError:
        known = ", ".join(c.value for c in CategorieDonnees)
        raise ConfigurationError(f"{where} : catégorie inconnue {name!r} (connues : {known})") from None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field holds directly (``Identite | None`` → [Identite]; a list holds none)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def _schema_field(path: str) -> bool:
    """Whether ``path`` (``droit_rsa.departement``) names a field of PersonneSPIE reachable block by block."""
    models: list[type[BaseModel]] = [PersonneSPIE]
    parts = path.split(".")
    for i, part in enumerate(parts):
        found = [m.model_fields[part] for m in models if part in m.model_fields]
        if not found:
            return False
        if i < len(parts) - 1:
            models = _models_in(found[0].annotation)
    return True


def _transport(spec: dict[str, Any], where: str) -> TransportOptions:
    return transports.parse_transport(spec, where)


def _mapping(name: str, fmt: str, where: str, directory: Path) -> None:
    """The mapping ``mappings/<name>.yaml`` exists, reads the flow's format and targets the schema's major version."""
    _file_name(name, where, "mapping", "mapping")
    path = directory / f"{name}.yaml"
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError:
        raise ConfigurationError(f"{where} : clé « mapping » : mapping « {name} » introuvable ({path})") from None
    except yaml.YAMLError:
        raise ConfigurationError(f"{where} : clé « mapping » : mapping « {name} » illisible (YAML invalide : {path})") from None
    if not isinstance(spec, dict):
        raise ConfigurationError(f"{where} : clé « mapping » : mapping « {name} » illisible (dictionnaire attendu : {path})")
    declared = spec.get("format")
    if declared != fmt:
        raise ConfigurationError(f"{where} : clé « mapping » : le mapping « {name} » lit le format « {declared} », "
                                 f"la source déclare le format « {fmt} »")
    version = spec.get("version_schema")
    major = _MAJOR.match(str(version)) if isinstance(version, str) else None
    expected = SCHEMA_VERSION.split(".")[0]
    if major is None:
        raise ConfigurationError(f"{where} : clé « mapping » : le mapping « {name} » ne déclare pas « version_schema » "
                                 f"(version du schéma SPIE visée, {expected}.x attendue)")
    if major.group(1) != expected:
        raise ConfigurationError(f"{where} : clé « mapping » : le mapping « {name} » vise le schéma SPIE {version}, "
                                 f"le hub publie la version {SCHEMA_VERSION} (version majeure {expected} attendue)")


def _output(name: str, where: str, directory: Path | None) -> None:
    """The output spec ``mappings/sorties/<name>.yaml`` exists and names a known output format."""
    _file_name(name, where, "sortie", "sortie")
    try:
        spec = formats.output_spec(name, directory)
    except ConfigurationError:
        path = (directory or _home.MAPPINGS_DIR / "sorties") / f"{name}.yaml"
        raise ConfigurationError(f"{where} : clé « sortie » : sortie « {name} » introuvable ou illisible ({path})") from None
    fmt = spec.get("format", "csv")
    known = formats.known_outputs()
    if not isinstance(fmt, str) or fmt not in known:
        raise ConfigurationError(f"{where} : clé « sortie » : la sortie « {name} » déclare un format inconnu "
                                 f"« {fmt} » (connus : {', '.join(known)})")


# -- from blocks to the hub's objects -----------------------------------------------------------------------------


def _recipient(where: str, rid: str, spec: RecipientSpec, outputs_dir: Path | None) -> Recipient:
    where = f"{where}, destinataire {rid}"
    _output(spec.sortie, where, outputs_dir)
    transport = _transport(spec.transport, where)
    politique: dict[CategorieDonnees, Base] = {}
    for name, rule in spec.politique.items():
        cat = _category(name, where)
        if rule.base not in ("legale", "consentement"):
            raise ConfigurationError(f"{where} : politique {name} : base {rule.base!r} inconnue (legale ou consentement)")
        if rule.base == "legale" and not (rule.article or "").strip():
            raise ConfigurationError(f"{where} : politique {name} : une base légale doit citer son article (clé « article »)")
        if rule.base == "legale" and cat.categorie_particuliere:
            raise ConfigurationError(f"{where} : politique {name} : {name} est une catégorie particulière (art. 9 RGPD), "
                                     "consentement exprès requis")
        politique[cat] = Base(rule.base, rule.article, rule.opposable)
    requises = tuple(_category(c, f"{where}, categories_requises") for c in spec.categories_requises)
    unknown = [name for name in spec.champs_foyer if name not in CHAMPS_FOYER]
    if unknown:
        raise ConfigurationError(f"{where} : clé « champs_foyer » : champ de foyer inconnu {unknown[0]!r} "
                                 f"(connus : {', '.join(CHAMPS_FOYER)})")
    return Recipient(rid, spec.libelle or rid, spec.sortie, transport, politique, requises, frozenset(spec.champs_foyer))


#: Folder names the hub uses beside the flows' own (archive/consentements: the consent files it imported).
RESERVED_FLOW_IDS = frozenset({"consentements"})


def _flow(label: str, flow_id: Any, data: Any, mappings_dir: Path, outputs_dir: Path | None) -> Flow:
    _identifier(flow_id, f"{label}, flux")
    where = f"{label}, flux {flow_id}"
    if flow_id in RESERVED_FLOW_IDS:
        # archive/<flux> and staging/<flux> are the flows' folders; these names are the hub's own ones there.
        raise ConfigurationError(f"{where} : identifiant réservé par le hub ({', '.join(sorted(RESERVED_FLOW_IDS))})")
    if isinstance(data, Mapping) and isinstance(data.get("destinataires"), Mapping):
        for rid in data["destinataires"]:
            _identifier(rid, f"{where}, destinataire")
    spec: FlowSpec = _validate(FlowSpec, data, where)
    source, at_source = spec.source, f"{where}, source"
    _identifier(source.partenaire, at_source, "partenaire")
    transport = _transport(source.transport, at_source)
    retour = _transport(source.retour if source.retour is not None
                        else {"type": "dossier-local", "dossier": f"outbox/{source.partenaire}"}, f"{at_source}, retour")
    readers = formats.known_readers()
    if source.format not in readers:
        raise ConfigurationError(f"{at_source} : clé « format » : format d'entrée inconnu « {source.format} » "
                                 f"(connus : {', '.join(readers)})")
    _mapping(source.mapping, source.format, at_source, mappings_dir)
    perimetre = []
    for n, condition in enumerate(spec.perimetre, 1):
        if not _schema_field(condition.champ):
            raise ConfigurationError(f"{where}, périmètre (condition n° {n}) : clé « champ » : « {condition.champ} » "
                                     "n'est pas un champ du schéma SPIE (chemin bloc.champ, ex. droit_rsa.departement)")
        perimetre.append(Condition(condition.champ, condition.egal, condition.libelle))
    return Flow(
        id=flow_id,
        titre=spec.titre,
        finalite=spec.finalite,
        planification=spec.planification,
        conservation_jours=spec.conservation_jours,
        partenaire=source.partenaire,
        format=source.format,
        mapping=source.mapping,
        transport=transport,
        perimetre=tuple(perimetre),
        destinataires=tuple(_recipient(where, rid, r, outputs_dir) for rid, r in spec.destinataires.items()),
        responsable=spec.responsable,
        personnes_concernees=spec.personnes_concernees,
        transferts_hors_ue=spec.transferts_hors_ue,
        seuil_petits_effectifs=spec.seuil_petits_effectifs,
        retour=retour,
    )


# -- reading and caching ------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (the second would silently win)."""


def _unique_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, Hashable):
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"clé « {key} » en double", key_node.start_mark)
            seen.add(key)
    return loader.construct_mapping(node, deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _path(path: Path | None) -> Path:
    return Path(path or os.environ.get("SPIE_HUB_FLOWS") or _home.REGISTRY_PATH)


def _stamp(path: Path) -> tuple[int, int]:
    try:
        info = path.stat()
    except OSError:
        raise ConfigurationError(f"Registre des flux introuvable : {path} (variable SPIE_HUB_FLOWS)") from None
    return info.st_mtime_ns, info.st_size


@lru_cache(maxsize=8)
def _document(path: Path, stamp: tuple[int, int]) -> RegistrySpec:
    """The registry file read and its top level (``organisation``, ``flux``) validated."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except OSError:
        raise ConfigurationError(f"Registre des flux introuvable : {path} (variable SPIE_HUB_FLOWS)") from None
    except yaml.YAMLError as error:
        # Only the problem and its line: the YAML error's own text quotes the file, which could hold a secret.
        mark = getattr(error, "problem_mark", None)
        line = f" (ligne {mark.line + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or "YAML invalide"
        raise ConfigurationError(f"{path.name} illisible : {problem}{line}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path.name} : dictionnaire attendu (sections « organisation » et « flux »)")
    spec: RegistrySpec = _validate(RegistrySpec, data, path.name)
    return spec


def _registries() -> tuple[tuple[str, ...], ...]:
    """What the registry is validated against: part of the cache key, so registering a toy format reloads."""
    return tuple(formats.known_readers()), tuple(formats.known_outputs()), tuple(transports.known_transports())


@lru_cache(maxsize=8)
def _load(path: Path, stamp: tuple[int, int], mappings_dir: Path | None, registries: tuple[tuple[str, ...], ...]) -> dict[str, Flow]:
    document = _document(path, stamp)
    mappings = mappings_dir or _home.MAPPINGS_DIR
    outputs = mappings_dir / "sorties" if mappings_dir else None
    flows = {flow_id: _flow(path.name, flow_id, spec, mappings, outputs) for flow_id, spec in (document.flux or {}).items()}
    _no_shared_inbox(path.name, flows)
    _one_mode_per_folder(path.name, flows)
    return flows


def _one_mode_per_folder(label: str, flows: dict[str, Flow]) -> None:
    """One folder used by several flows (the Département's drop receives two) must be declared alike: a ``groupe``
    on one declaration only would open and close the drop in turn, run after run."""
    seen: dict[tuple[str, str], tuple[str, tuple[object, object]]] = {}
    for flow in flows.values():
        places = [("source", flow.transport), ("retour", flow.retour),
                  *((f"destinataire {r.id}", r.transport) for r in flow.destinataires)]
        for where, options in places:
            folder = getattr(options, "dossier", None)
            if options is None or folder is None:
                continue
            mode = (getattr(options, "groupe", None), getattr(options, "acces_groupe", None))
            key = (options.type, str(folder))
            first = seen.setdefault(key, (f"flux {flow.id}, {where}", mode))
            if first[1] != mode:
                raise ConfigurationError(
                    f"{label}, flux {flow.id}, {where} : le dossier {folder} est déclaré avec d'autres droits "
                    f"(groupe, acces_groupe) que dans {first[0]} ; les déclarer à l'identique")


def _no_shared_inbox(label: str, flows: dict[str, Flow]) -> None:
    """Two flows reading one inbox with patterns a file could match both would race for its files (whichever lists
    first takes it, under its own mapping): refused. Disjoint patterns in one folder (``*inscriptions*.csv`` beside
    ``*cessations*.csv``) are fine. Overlap is judged conservatively: equal patterns, or one pattern matching the
    other read as a name."""
    seen: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for flow in flows.values():
        # Settings of the connection's behaviour (timeouts, retries) do not make it another place.
        options = flow.transport.model_dump(exclude={"motif", "stabilite_secondes", "delai_secondes", "tentatives",
                                                     "intervalle_secondes"})
        place = (str(options.pop("type")), json.dumps(options, sort_keys=True, default=str))
        pattern = flow.transport.motif
        for other_id, other_pattern in seen.get(place, []):
            if pattern == other_pattern or fnmatch.fnmatchcase(pattern, other_pattern) \
                    or fnmatch.fnmatchcase(other_pattern, pattern):
                raise ConfigurationError(
                    f"{label}, flux {flow.id} : sa boîte de dépôt et son motif « {pattern} » recouvrent ceux du flux "
                    f"{other_id} (« {other_pattern} ») ; un fichier serait pris par l'un ou l'autre au hasard")
        seen.setdefault(place, []).append((flow.id, pattern))


def load_flows(path: Path | None = None, *, mappings_dir: Path | None = None) -> dict[str, Flow]:
    """Every flow of the registry (``path``, else ``SPIE_HUB_FLOWS``, else the checkout's ``flows.yaml``), validated.

    ``mappings_dir`` is where mappings (and, under ``sorties/``, output specs) are looked up; by default the
    checkout's ``mappings/``. Results are cached per file version, folder and set of known formats and transports.
    """
    path = _path(path)
    return _load(path, _stamp(path), mappings_dir, _registries())


def organisation(path: Path | None = None) -> dict[str, str]:
    """The registry's ``organisation`` section (controller, DPO, security measures) for the art. 30 register."""
    path = _path(path)
    section = _document(path, _stamp(path)).organisation
    if section is None:
        return {}
    return {k: str(v) for k, v in section.model_dump(exclude_none=True).items()}


@dataclass(frozen=True)
class ConsentIssuer:
    """A partner allowed to send consents: its inbox and what it may grant on the person's behalf."""

    id: str
    boite: TransportOptions
    #: recipient -> categories it may record permits for
    recueille: dict[str, frozenset[CategorieDonnees]]
    #: the recipients a withdrawal or refusal naming none applies to: those it collects for and those of the
    #: flows it is the source of
    destinataires: frozenset[str]

    def may_permit(self, recipient: str, category: str) -> bool:
        return any(c.value == category for c in self.recueille.get(recipient, ()))


@dataclass(frozen=True)
class ConsentRegistry:
    finalites: frozenset[str]
    emetteurs: dict[str, ConsentIssuer]


def _consent_registry(label: str, section: Any, flows: dict[str, Flow]) -> ConsentRegistry:
    where = f"{label}, consentements"
    if section is None:
        return ConsentRegistry(frozenset(), {})
    if not isinstance(section, Mapping):
        raise ConfigurationError(f"{where} : dictionnaire attendu (clés « finalites » et « emetteurs »)")
    for pid in (section.get("emetteurs") or {}) if isinstance(section.get("emetteurs"), Mapping) else ():
        _identifier(pid, f"{where}, émetteur")
    spec: ConsentSectionSpec = _validate(ConsentSectionSpec, section, where)
    known = {r.id for flow in flows.values() for r in flow.destinataires}
    inboxes: dict[str, str] = {}
    for flow in flows.values():
        # Settings of the connection's behaviour (timeouts, retries) do not make it another place.
        options = flow.transport.model_dump(exclude={"motif", "stabilite_secondes", "delai_secondes", "tentatives",
                                                     "intervalle_secondes"})
        inboxes[json.dumps(options, sort_keys=True, default=str)] = f"flux {flow.id}"
    issuers: dict[str, ConsentIssuer] = {}
    for pid, issuer in spec.emetteurs.items():
        at = f"{where}, émetteur {pid}"
        boite = _transport(issuer.boite, f"{at}, boite")
        place = json.dumps(boite.model_dump(exclude={"motif", "stabilite_secondes"}), sort_keys=True, default=str)
        if place in inboxes:
            raise ConfigurationError(f"{at} : clé « boite » : même dossier que la boîte de dépôt du {inboxes[place]} "
                                     "(l'émetteur d'un fichier est la boîte par laquelle il arrive : une boîte par émetteur)")
        inboxes[place] = f"émetteur de consentements {pid}"
        recueille: dict[str, frozenset[CategorieDonnees]] = {}
        for rid, names in issuer.recueille.items():
            if rid not in known:
                raise ConfigurationError(f"{at} : clé « recueille » : destinataire inconnu {rid!r} (déclarés dans les "
                                         f"flux : {', '.join(sorted(known))})")
            recueille[rid] = frozenset(_category(n, f"{at}, recueille, {rid}") for n in names)
        own = {r.id for flow in flows.values() if flow.partenaire == pid for r in flow.destinataires}
        issuers[pid] = ConsentIssuer(pid, boite, recueille, frozenset(recueille) | own)
    return ConsentRegistry(frozenset(spec.finalites), issuers)


@lru_cache(maxsize=8)
def _load_consents(path: Path, stamp: tuple[int, int], registries: tuple[tuple[str, ...], ...]) -> ConsentRegistry:
    return _consent_registry(path.name, _document(path, stamp).consentements, _load(path, stamp, None, registries))


def consent_registry(path: Path | None = None) -> ConsentRegistry:
    """The registry's ``consentements`` section, validated: issuers, their inboxes and authority; the purposes."""
    path = _path(path)
    return _load_consents(path, _stamp(path), _registries())


def get_flow(flow_id: str, path: Path | None = None) -> Flow:
    flows = load_flows(path)
    if flow_id not in flows:
        raise ConfigurationError(f"Flux inconnu : {flow_id} (flux déclarés : {', '.join(sorted(flows))})")
    return flows[flow_id]


def clear_cache() -> None:
    """Forget every registry read (tests that rewrite a file or swap a registered format in place)."""
    _load.cache_clear()
    _document.cache_clear()
    _load_consents.cache_clear()
