"""The map of flows, drawn from the registry itself (``spie-hub flux carte``): partners who send on the left, the
hub in the middle, recipients on the right, one numbered line per flow, with its format and transport each way.

Generated, never drawn by hand: the picture in the README and ``docs/carte-des-flux.svg`` cannot drift from
``flows.yaml`` (a test regenerates it and compares).
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

from spie_hub.registry.flows import ConsentRegistry, Flow

#: Readable names of the partners and recipients of the default registry; any other id is shown as it is.
LIBELLES = {
    "caf-msa": "CAF / MSA", "departement": "Département", "departement-052": "Département (052)",
    "france-travail": "France Travail", "missions-locales": "Missions locales", "cap-emploi": "Cap emploi",
    "plateforme-insertion": "Plateforme d'insertion",
}
_TRANSPORTS = {"dossier-local": "dossier", "sftp": "SFTP", "api-https": "API HTTPS"}
_COLOURS = ["#1f5f99", "#a14a00", "#2d7a3a", "#7b3294", "#b8860b", "#c0392b", "#00838f", "#5d4037", "#37474f",
            "#ad1457", "#558b2f", "#283593"]

BOX_W, BOX_H, GAP, TOP = 190, 46, 22, 70
LEFT_X, HUB_X, RIGHT_X, WIDTH = 20, 420, 820, 1030


@dataclass(frozen=True)
class Line:
    number: int
    flow: Flow


def _label(party: str) -> str:
    return LIBELLES.get(party, party)


def _partner_of(recipient_id: str) -> str:
    """The partner a recipient id belongs to (``departement-052`` is the Département)."""
    return "departement" if recipient_id.startswith("departement") else recipient_id


def _boxes(names: list[str], x: int) -> dict[str, tuple[int, int]]:
    return {name: (x, TOP + i * (BOX_H + GAP)) for i, name in enumerate(names)}


def _box(x: int, y: int, text: str, fill: str = "#f4f6f8") -> str:
    return (f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="8" fill="{fill}" stroke="#37474f"/>'
            f'<text x="{x + BOX_W / 2}" y="{y + BOX_H / 2 + 5}" text-anchor="middle">{escape(text)}</text>')


def flow_map_svg(flows: dict[str, Flow], consents: ConsentRegistry | None = None) -> str:
    """The SVG of ``flows`` (and of the consent inboxes, when given)."""
    lines = [Line(n, flow) for n, flow in enumerate(flows.values(), start=1)]
    senders = sorted({line.flow.partenaire for line in lines} | set(consents.emetteurs if consents else ()),
                     key=lambda p: (_label(p) != "Département", _label(p)))
    recipients = sorted({r.id for line in lines for r in line.flow.destinataires},
                        key=lambda r: (not r.startswith("departement"), _label(r)))
    left, right = _boxes(senders, LEFT_X), _boxes(recipients, RIGHT_X)
    rows = max(len(senders), len(recipients), 2)
    hub_top, hub_h = TOP, rows * (BOX_H + GAP) - GAP
    legend_top = TOP + hub_h + 40
    height = legend_top + 40 * len(lines) + 22 * (2 if consents and consents.emetteurs else 1) + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
           'font-family="DejaVu Sans, Arial, sans-serif" font-size="13">',
           '<title>Carte des flux du hub SPIE</title>',
           f'<text x="{WIDTH / 2}" y="30" text-anchor="middle" font-size="18" font-weight="bold">Carte des flux du hub '
           'SPIE (générée depuis le registre)</text>',
           f'<text x="{LEFT_X + BOX_W / 2}" y="{TOP - 12}" text-anchor="middle" font-weight="bold">Émetteurs</text>',
           f'<text x="{RIGHT_X + BOX_W / 2}" y="{TOP - 12}" text-anchor="middle" font-weight="bold">Destinataires</text>',
           f'<rect x="{HUB_X}" y="{hub_top}" width="{BOX_W}" height="{hub_h}" rx="12" fill="#e3f2fd" stroke="#1f5f99"/>',
           f'<text x="{HUB_X + BOX_W / 2}" y="{hub_top + 24}" text-anchor="middle" font-weight="bold">Hub SPIE</text>']
    for i, text in enumerate(["validation", "schéma SPIE partagé", "pseudonymisation", "consentement par",
                              "enregistrement", "journal d'audit signé"]):
        out.append(f'<text x="{HUB_X + BOX_W / 2}" y="{hub_top + 50 + 18 * i}" text-anchor="middle" '
                   f'fill="#37474f">{escape(text)}</text>')
    for name, (x, y) in left.items():
        out.append(_box(x, y, _label(name)))
    for name, (x, y) in right.items():
        out.append(_box(x, y, _label(name)))
    count = max(len(lines), 1)
    for line in lines:
        colour = _COLOURS[(line.number - 1) % len(_COLOURS)]
        sx, sy = left[line.flow.partenaire]
        hub_y = hub_top + 20 + (hub_h - 40) * (line.number - 0.5) / count
        start_y = sy + BOX_H / 2
        out.append(f'<path d="M{sx + BOX_W},{start_y} C{sx + BOX_W + 90},{start_y} {HUB_X - 90},{hub_y} {HUB_X},{hub_y}" '
                   f'fill="none" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{HUB_X - 14}" y="{hub_y - 4}" text-anchor="end" fill="{colour}" '
                   f'font-weight="bold">{line.number}</text>')
        for recipient in line.flow.destinataires:
            rx, ry = right[recipient.id]
            end_y = ry + BOX_H / 2
            out.append(f'<path d="M{HUB_X + BOX_W},{hub_y} C{HUB_X + BOX_W + 90},{hub_y} {rx - 90},{end_y} {rx},{end_y}" '
                       f'fill="none" stroke="{colour}" stroke-width="2" marker-end="url(#fleche)"/>')
    if consents is not None:
        for issuer in consents.emetteurs:
            sx, sy = left[issuer]
            out.append(f'<path d="M{sx + BOX_W},{sy + BOX_H - 6} L{HUB_X},{hub_top + hub_h - 12}" fill="none" '
                       'stroke="#9e9e9e" stroke-width="1.2" stroke-dasharray="5,4"/>')
    out.insert(1, '<defs><marker id="fleche" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
                  'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#37474f"/></marker></defs>')
    y = legend_top
    for line in lines:
        flow = line.flow
        colour = _COLOURS[(line.number - 1) % len(_COLOURS)]
        ways = ", ".join(f"{_label(r.id)} : {r.sortie} par {_TRANSPORTS.get(r.transport.type, r.transport.type)}"
                         for r in flow.destinataires)
        out.append(f'<text x="{LEFT_X}" y="{y}" fill="{colour}" font-weight="bold">'
                   f'{escape(f"{line.number}. {flow.titre} ({flow.id})")}</text>')
        detail = f"reçu en {flow.format} par {_TRANSPORTS.get(flow.transport.type, flow.transport.type)} → {ways}"
        out.append(f'<text x="{LEFT_X + 18}" y="{y + 17}" fill="#37474f" font-size="12">{escape(detail)}</text>')
        y += 40
    if consents is not None and consents.emetteurs:
        out.append(f'<text x="{LEFT_X}" y="{y}" fill="#616161">- - - Consentements (FHIR Consent) reçus de chaque '
                   f'émetteur par sa boîte : {escape(", ".join(_label(p) for p in consents.emetteurs))}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
