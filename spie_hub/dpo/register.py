"""The register of processing activities (RGPD art. 30.1), generated from the flow registry.

One fiche per flow, in the order of the CNIL model: controller and DPO, purpose, categories of persons and of data,
legal basis per data category and recipient, recipients, transfers outside the EU, retention, security measures.
"""

from __future__ import annotations

from dataclasses import dataclass

from spie_hub.registry import Flow, load_flows, organisation


@dataclass(frozen=True)
class Fiche:
    flux: str
    titre: str
    responsable: str
    finalite: str
    personnes: str
    source: str
    categories: list[str]
    destinataires: list[tuple[str, list[tuple[str, str]]]]  # (recipient, [(category, basis)])
    transferts: str
    conservation: str


def _basis(kind: str, article: str | None, opposable: bool) -> str:
    if kind == "consentement":
        return "consentement de la personne (RGPD art. 6.1.a ; art. 9.2.a pour une catégorie particulière)"
    return f"{article}" + (" — droit d'opposition (RGPD art. 21)" if opposable else " — sans droit d'opposition")


def fiche(flow: Flow) -> Fiche:
    recipients = []
    categories: dict[str, None] = {}
    for recipient in flow.destinataires:
        rows = []
        for category, base in recipient.politique.items():
            categories[category.libelle] = None
            rows.append((category.libelle, _basis(base.kind, base.article, base.opposable)))
        recipients.append((f"{recipient.libelle} ({recipient.id})", rows))
    return Fiche(
        flux=flow.id, titre=flow.titre, responsable=flow.responsable, finalite=flow.finalite,
        personnes=flow.personnes_concernees, source=f"{flow.partenaire} (format {flow.format})",
        categories=list(categories), destinataires=recipients, transferts=flow.transferts_hors_ue,
        conservation=f"{flow.conservation_jours} jours après livraison (fichiers reçus, livrés et mis en quarantaine), "
                     f"puis purge automatique journalisée ; {_stores()}",
    )


def _stores() -> str:
    """The retention of what the hub keeps besides the flow's files (registry ``organisation``, or defaults)."""
    from spie_hub.run.retention import store_retention

    r = store_retention()
    return (f"consentements {r.consentements} jours après leur fin ou leur retrait (une opposition sans fin est "
            f"conservée), fichiers de consentements reçus {r.consentements} jours après leur import, "
            f"retraits {r.retraits} jours après leur propagation, exécutions et métadonnées de livraison "
            f"{r.executions} jours, exports du journal et rapports {r.exports} jours ; archive et quarantaine d'un flux "
            "retiré du registre : la plus longue durée des flux déclarés")


def register() -> tuple[dict[str, str], list[Fiche]]:
    return organisation(), [fiche(f) for f in load_flows().values()]


def as_markdown() -> str:
    org, fiches = register()
    lines = ["# Registre des activités de traitement (RGPD art. 30)", "",
             f"- Organisme : {org.get('nom', 'non renseigné')} ({org.get('contact', 'contact non renseigné')})",
             f"- Délégué à la protection des données : {org.get('dpo', 'non renseigné')}", ""]
    for f in fiches:
        lines += [f"## {f.titre} (`{f.flux}`)", "",
                  f"- Responsable du traitement : {f.responsable}", f"- Finalité : {f.finalite}",
                  f"- Personnes concernées : {f.personnes}", f"- Source des données : {f.source}",
                  f"- Catégories de données : {', '.join(f.categories)}", "- Destinataires et bases légales :"]
        for recipient, rows in f.destinataires:
            lines.append(f"  - {recipient}")
            lines += [f"    - {category} : {basis}" for category, basis in rows]
        lines += [f"- Transferts hors Union européenne : {f.transferts}", f"- Durée de conservation : {f.conservation}",
                  f"- Mesures de sécurité : {org.get('mesures_securite', 'non renseigné')}", ""]
    return "\n".join(lines)
