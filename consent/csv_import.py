"""The hub's CSV layout for consents and oppositions (for partners without a FHIR API).

One row per decision of a person; ``;`` separator, UTF-8 (BOM accepted). Each row becomes a hub FHIR Consent
(consent/fhir_build.py), so CSV and FHIR imports share one validation and one storage path. Columns are described
in docs/consentement.md; errors name the line and the column, never the NIR.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from consent.fhir_build import consent

REQUIRED = ("identifiant", "nir", "type", "decision", "statut", "destinataires", "categories")
OPTIONAL = ("debut", "fin", "finalite", "date_recueil", "recueilli_par", "mode_recueil", "base_reglementaire", "responsable",
            "consentement_expres")
_STATUS = {"actif": "active", "retire": "inactive", "retiré": "inactive", "erreur": "entered-in-error"}
_DECISION = {"accord": True, "refus": False}


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
            if None in row or any(row.get(c) is None for c in REQUIRED):
                errors.append(f"{where} : nombre de colonnes différent de l'en-tête")
                continue
            try:
                entries.append((where, _row_to_consent(row)))
            except ValueError as error:
                # fhir.resources errors quote the input value: keep only our own messages.
                message = str(error) if not hasattr(error, "errors") else "valeur invalide (date ou code)"
                errors.append(f"{where} : {message}")
    return entries, errors
