"""The proof of collection a consent keeps (who collected it, how, on what basis, who is responsible): controlled
values only.

Partners type these as free text (CSV ``recueilli_par``, ``mode_recueil``, ``base_reglementaire``, ``responsable``;
FHIR ``sourceReference``, ``regulatoryBasis``, ``controller``), and a third party's NIR or name typed there was
stored verbatim in the consent registry and printed by ``dpo personne``. The registry keeps only:

* a partner the registry declares (recipients, consent issuers, flows' sources), by its identifier;
* a collection mode from ``MODES`` (a value naming one of them, « retrait par courrier », keeps the code only);
* a legal basis from ``RGPD_BASES`` or an article the registry's policies cite;

anything else becomes ``FREE_TEXT``, and nothing with six digits in a row (the start of a NIR) is ever kept. The same
reduction applies when the DPO's answer prints what an older version of the hub stored verbatim (``public_source``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

FREE_TEXT = "texte libre non conservé"
#: How a decision was collected (code list of the hub's profile, docs/consentement.md).
MODES = ("papier", "courrier", "courriel", "en-ligne", "formulaire", "entretien", "telephone", "oral",
         "signature-electronique")
#: Legal grounds a partner may cite for collecting or recording a consent or an objection (RGPD).
RGPD_BASES = (*(f"RGPD art. 6.1.{x}" for x in "abcdef"), "RGPD art. 7", "RGPD art. 7.3",
              *(f"RGPD art. 9.2.{x}" for x in "abcdefghij"), "RGPD art. 21")
#: An empty date once written by the CSV reader: never a real collection date.
_NO_DATE = "1970-01-01"
_IDENTIFYING = re.compile(r"\d{6}")
#: Keys of a stored source the hub writes itself (their values are its own words or booleans).
_OWN_KEYS = ("consentement_expres", "retrait_sans_consentement_connu", "fin_par_mise_a_jour_refusee")


def _fold(text: str) -> str:
    """Lower case, no accents, words joined by '-': « Téléphone » and « telephone » are one code."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return "-".join(re.findall(r"[a-z0-9]+", plain.lower()))


def _basis_key(text: str) -> str:
    return re.sub(r"\b(article|art)\b|[^a-z0-9]", "", _fold(text).replace("-", " "))


def _safe(value: str) -> str:
    return FREE_TEXT if _IDENTIFYING.search(value) else value


def partner(value: Any, partners: Iterable[str]) -> str:
    """A declared partner's identifier, else ``FREE_TEXT``."""
    text = value.strip().lower() if isinstance(value, str) else ""
    return _safe(text) if text and text in set(partners) else FREE_TEXT


def mode(value: Any) -> str | None:
    """The collection mode a value names (its code), or None."""
    folded = f"-{_fold(value)}-" if isinstance(value, str) else ""
    return next((m for m in MODES if f"-{m}-" in folded), None)


def basis(value: Any, articles: Iterable[str] = ()) -> str:
    """A known legal basis (as the hub spells it), else ``FREE_TEXT``."""
    if not isinstance(value, str):
        return FREE_TEXT
    key = _basis_key(value)
    known = {_basis_key(b): b for b in (*RGPD_BASES, *articles)}
    return _safe(known[key]) if key and key in known else FREE_TEXT


def collection(values: Iterable[Any], partners: Iterable[str]) -> list[str]:
    """Who collected the decision and how: each part (``;``-separated) a declared partner or a mode code."""
    partners = set(partners)
    out: list[str] = []
    for value in values:
        for part in str(value).split(";") if value is not None else [""]:
            kept = partner(part, partners)
            if kept == FREE_TEXT:
                kept = mode(part) or FREE_TEXT
            if kept not in out:
                out.append(kept)
    return out


def articles_of(policies: Iterable[Any]) -> set[str]:
    """Articles the registry's policies cite, whole and each ``;``-separated part (« CASF art. L262-40 »)."""
    found: set[str] = set()
    for article in policies:
        if isinstance(article, str) and article.strip():
            found.add(article.strip())
            found.update(p.strip() for p in article.split(";") if p.strip())
    return found


def registry_terms(flows: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """(declared partner identifiers, cited articles) of the registry's flows."""
    partners: set[str] = set()
    articles: list[Any] = []
    for flow in flows.values():
        partners.add(flow.partenaire)
        for recipient in flow.destinataires:
            partners.add(recipient.id)
            articles.extend(getattr(b, "article", None) for b in recipient.politique.values())
    return partners, articles_of(articles)


def controlled_source(source: Mapping[str, Any], partners: Iterable[str], articles: Iterable[str] = ()) -> dict[str, Any]:
    """A consent's proof of collection reduced to controlled values (idempotent: stored sources pass unchanged)."""
    partners, articles = set(partners), set(articles)
    out: dict[str, Any] = {}
    date = source.get("date")
    if isinstance(date, str) and re.fullmatch(r"\d{4}(-\d{2}(-\d{2})?)?", date) and date != _NO_DATE:
        out["date"] = date
    out["controleur"] = sorted({partner(c, partners) for c in _list(source.get("controleur"))})
    out["base_reglementaire"] = list(dict.fromkeys(basis(b, articles) for b in _list(source.get("base_reglementaire"))))
    out["recueil"] = collection(_list(source.get("recueil")), partners)
    for key in _OWN_KEYS:
        if key in source:
            out[key] = source[key]
    return out


def public_source(source: Mapping[str, Any], flows: Mapping[str, Any]) -> dict[str, Any]:
    """What the DPO's answer shows of a stored source (one written verbatim by an older hub included)."""
    partners, articles = registry_terms(flows)
    return controlled_source(source if isinstance(source, Mapping) else {}, partners, articles)


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
