"""The hub's CSV layout for consents and oppositions (for partners without a FHIR API).

One row per decision of a person; ``;`` separator, UTF-8 (BOM accepted). Each row becomes a hub FHIR Consent
(consent/fhir_build.py), so CSV and FHIR imports share one validation and one storage path. Columns are described
in docs/consentement.md; errors name the line and the column, never the NIR.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consent.fhir_build import consent

REQUIRED = ("identifiant", "nir", "type", "decision", "statut", "destinataires", "categories")
OPTIONAL = ("debut", "fin", "finalite", "date_recueil", "recueilli_par", "mode_recueil", "base_reglementaire", "responsable",
            "consentement_expres")
_STATUS = {"actif": "active", "retire": "inactive", "retiré": "inactive", "erreur": "entered-in-error"}
_DECISION = {"accord": True, "refus": False}
#: A FHIR date (year, year-month or full date): what the date columns must hold.
_FHIR_DATE = re.compile(r"\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?)?")
DATE_COLUMNS = ("debut", "fin", "date_recueil")


@dataclass(frozen=True)
class UnreadableRow:
    """A row that could not become a Consent but names an identifier: the importer refuses it, and (as for an
    unreadable FHIR update) ends the issuer's active consent of that identifier (a permit never outlives an update)."""

    consent_id: str
    reason: str


def _unreadable_columns(row: dict[str, Any]) -> list[str]:
    """The columns whose value the hub cannot read (named in the report; their values never are)."""
    bad = [c for c in DATE_COLUMNS if (v := (row.get(c) or "").strip()) and not _FHIR_DATE.fullmatch(v)]
    if (row.get("statut") or "").strip().lower() not in _STATUS:
        bad.append("statut")
    if (row.get("decision") or "").strip().lower() not in _DECISION:
        bad.append("decision")
    return bad


def _says_refusal(row: dict[str, Any]) -> bool:
    """Whether a row says refusal, opposition or withdrawal in any column the hub can read."""
    status = _STATUS.get((row.get("statut") or "").strip().lower())
    return (status in ("inactive", "entered-in-error") or (row.get("decision") or "").strip().lower() == "refus"
            or "opposition" in (row.get("type") or "").strip().lower())


def _fallback(row: dict[str, Any], where: str, reason: str) -> tuple[tuple[str, Any] | None, str]:
    """What an unreadable row still does. Saying refusal, opposition or withdrawal with a NIR, it becomes a blanket
    refusal of its own identifier (a withdrawal of it when it says retire/erreur), without the unreadable columns:
    the importer ends the consent it replaces or blocks the person (the recipients it names, else the issuer's).
    Otherwise, naming an identifier, it ends the issuer's consent of that identifier. The report names the columns."""
    cid = (row.get("identifiant") or "").strip()
    nir = (row.get("nir") or "").strip()
    bad = _unreadable_columns(row)
    detail = f"{reason} (colonnes illisibles : {', '.join(bad)})" if bad else reason
    if _says_refusal(row) and nir:
        status = _STATUS.get((row.get("statut") or "").strip().lower())
        kind = "opposition" if "opposition" in (row.get("type") or "").lower() else "consentement"
        recipients = [r.strip() for r in (row.get("destinataires") or "").split("|") if r.strip()]
        # The partner's identifier first; one FHIR refuses (an underscore, too long) must not drop the refusal: the
        # importer then stores it under an id of the hub's own, per person.
        for named, rid in ((recipients, cid), ([], cid), (recipients, ""), ([], "")):
            try:
                resource = consent(rid or "sans-identifiant", nir, grant=False, kind=kind,
                                   status=status if status in ("inactive", "entered-in-error") else "active",
                                   recipients=named, categories=[], blanket=True, start=None, end=None, date=None)
            except ValueError:
                continue
            return (where, resource), f"{where} : {detail} : refus ou retrait appliqué sans les colonnes illisibles"
    if cid:
        return (where, UnreadableRow(cid, f"{detail} : le consentement de cet identifiant prend fin")), ""
    return None, f"{where} : {detail}"


def _row_to_consent(row: dict[str, str]) -> dict[str, Any]:
    kind = row["type"].strip().lower()
    decision = row["decision"].strip().lower()
    status = _STATUS.get(row["statut"].strip().lower())
    if status is None:
        raise ValueError("colonne statut : actif, retire ou erreur attendu")
    recipients = [r.strip() for r in row["destinataires"].split("|") if r.strip()]
    categories = [c.strip() for c in row["categories"].split("|") if c.strip()]
    blanket = categories == ["toutes"]
    explicit = (row.get("consentement_expres") or "").strip().lower() in ("oui", "o", "1", "vrai")
    common: dict[str, Any] = dict(
        start=row.get("debut") or None, end=row.get("fin") or None,
        # An empty collection date is absent (it was once written 1970-01-01, which reads as a date).
        date=(row.get("date_recueil") or "").strip() or None, controller=row.get("responsable") or None,
        collected_by=row.get("recueilli_par") or None, method=row.get("mode_recueil") or None,
        regulatory_basis=row.get("base_reglementaire") or None, purpose=row.get("finalite") or None,
    )
    if status != "active" and (not recipients or not categories or blanket or decision not in _DECISION):
        # A withdrawal (or an entry in error) takes effect whatever it leaves empty: it ends the consent of the same
        # identifier, or refuses everything to the recipients it names (to the issuer's when it names none).
        return consent(row["identifiant"].strip(), row["nir"].strip(), grant=False, kind=kind, status=status,
                       recipients=recipients, categories=[], blanket=True, **common)
    if decision not in _DECISION:
        raise ValueError("colonne decision : accord ou refus attendu")
    if kind == "opposition" and _DECISION[decision]:
        raise ValueError("une opposition est toujours un refus (colonne decision)")
    if _DECISION[decision] and not recipients:
        raise ValueError("colonne destinataires vide (un accord nomme ses destinataires)")
    if not categories:
        raise ValueError("colonne categories vide (ou « toutes » pour un refus général)")
    return consent(
        row["identifiant"].strip(), row["nir"].strip(), grant=_DECISION[decision], kind=kind, status=status,
        recipients=recipients, categories=[] if blanket else categories, blanket=blanket, explicit=explicit, **common,
    )


def read_csv_consents(path: Path) -> tuple[list[tuple[str, Any]], list[str]]:
    """Rows turned into Consent resources, and the errors of the rows that could not be."""
    entries: list[tuple[str, Any]] = []
    errors: list[str] = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=";")
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ValueError(f"colonnes manquantes : {', '.join(missing)} (séparateur « ; » attendu)")
        reader.fieldnames = header
        for row in reader:
            where = f"ligne {reader.line_num}"
            extra = row.pop(None, None)  # type: ignore[call-overload]
            if extra is not None and not any(v.strip() for v in extra):
                extra = None  # empty trailing columns (one ';' too many) carry nothing
            if extra is not None or any(row.get(c) is None for c in REQUIRED):
                reason = "nombre de colonnes différent de l'en-tête"
            else:
                try:
                    entries.append((where, _row_to_consent(row)))
                    continue
                except ValueError as error:
                    # fhir.resources errors quote the input value: keep only our own messages.
                    reason = str(error) if not hasattr(error, "errors") else "valeur invalide (date ou code)"
            # An unreadable row is never dropped into inaction when it says refusal or withdrawal, or names a consent.
            entry, message = _fallback(row, where, reason)
            if entry is not None:
                entries.append(entry)
            if message:
                errors.append(message)
    return entries, errors
