"""NIR (numéro d'inscription au répertoire): validation and normalisation.

Rules (shared/formats/README.md §7): 13 characters plus an optional 2-digit key, key = 97 − (N mod 97) where
Corsica's ``2A``/``2B`` count as ``19``/``18``; fictitious months 20–42 and 50–99 are valid.
"""

from __future__ import annotations

import re

from spie_hub.core.errors import RecordError

_SHAPE = re.compile(r"^[12378][0-9]{4}(2[AB]|[0-9]{2})[0-9]{6}([0-9]{2})?$")


class NirInvalide(RecordError):
    """The NIR is malformed; the message says why, without repeating the NIR."""


def cle_nir(nir13: str) -> int:
    """Return the control key of a 13-character NIR."""
    numeric = nir13.replace("2A", "19", 1) if nir13[5:7] == "2A" else nir13
    numeric = numeric.replace("2B", "18", 1) if nir13[5:7] == "2B" else numeric
    return 97 - int(numeric) % 97


def _month_is_valid(month: int) -> bool:
    return 1 <= month <= 12 or 20 <= month <= 42 or 50 <= month <= 99


def normaliser_nir(raw: str) -> str:
    """Return the normalised 13-character NIR, or raise ``NirInvalide`` naming the problem.

    Spaces, dots and dashes are ignored; letters are upper-cased; a 15-character NIR must carry the right key.
    """
    nir = re.sub(r"[\s.\-]", "", raw)
    # Identifiers are ASCII: fullwidth or Arabic-Indic digits pass ``\d`` and ``int()`` but no partner's system
    # (nor the pseudonymiser, which encodes the NIR as ASCII) reads them as the same person.
    if not nir.isascii():
        raise NirInvalide("NIR invalide : caractères hors ASCII (chiffres 0 à 9 attendus)")
    nir = nir.upper()
    if len(nir) not in (13, 15):
        raise NirInvalide(f"NIR invalide : {len(nir)} caractères au lieu de 13 ou 15")
    if not _SHAPE.fullmatch(nir):
        if nir[0] not in "12378":
            raise NirInvalide("NIR invalide : le premier caractère (sexe) doit être 1, 2, 3, 7 ou 8")
        raise NirInvalide("NIR invalide : caractères non numériques hors département 2A/2B")
    if not _month_is_valid(int(nir[3:5])):
        raise NirInvalide(f"NIR invalide : mois de naissance {nir[3:5]} impossible")
    nir13 = nir[:13]
    if len(nir) == 15:
        attendue = cle_nir(nir13)
        if int(nir[13:]) != attendue:
            raise NirInvalide("NIR invalide : la clé de contrôle ne correspond pas")
    return nir13


def est_nir_valide(raw: str) -> bool:
    try:
        normaliser_nir(raw)
    except NirInvalide:
        return False
    return True
