"""Crosswalks from partner codes to the shared SPIE vocabularies (shared/formats/README.md §6 and §9).

Only correspondences verified code by code in their sources are listed; the mapping between columns is the
project's reading of them and is versioned with the schema.
"""

from __future__ import annotations

from schemas.codes import Frein, TypeContrat, TypeOrientation

#: CNAF instruction flux, DSP codes (WebRSA dsp.po) → national frein. "Aucune difficulté" codes map to nothing.
FREIN_DEPUIS_CNAF_DSP: dict[str, Frein] = {
    # DIFSOC: difficultés sociales
    "0402": Frein.SANTE, "0403": Frein.SANTE, "0404": Frein.LANGUE_CALCUL, "0405": Frein.ADMINISTRATIF,
    "0406": Frein.FINANCIER,
    # DIFDISP: obstacles à la disponibilité
    "0502": Frein.FAMILLE, "0503": Frein.FAMILLE, "0504": Frein.FAMILLE, "0505": Frein.FAMILLE,
    "0506": Frein.FAMILLE, "0507": Frein.MOBILITE, "0508": Frein.SANTE, "0509": Frein.LOGEMENT,
    "0510": Frein.LANGUE_CALCUL, "0514": Frein.FAMILLE,
    # DIFLOG: difficultés de logement
    **{f"10{n:02d}": Frein.LOGEMENT for n in range(2, 10)},
}

#: France Travail diagnostic argumenté, "contraintes" 23–29 → national frein.
FREIN_DEPUIS_FT_CONTRAINTE: dict[str, Frein] = {
    "23": Frein.MOBILITE, "24": Frein.FAMILLE, "25": Frein.SANTE, "26": Frein.LANGUE_CALCUL,
    "27": Frein.LOGEMENT, "28": Frein.FINANCIER, "29": Frein.ADMINISTRATIF,
}

#: Orientation vocabularies of each partner → shared orientation.
ORIENTATION: dict[str, TypeOrientation] = {
    # France Travail parcours
    "PED": TypeOrientation.PRO, "PSO": TypeOrientation.SOCIO_PRO, "PSP": TypeOrientation.SOCIAL,
    # WebRSA code_type_orient
    "EMPLOI": TypeOrientation.PRO, "SOCIOPRO": TypeOrientation.SOCIO_PRO, "SOCIAL": TypeOrientation.SOCIAL,
    # carnet de bord / rdv-insertion
    "pro": TypeOrientation.PRO, "sociopro": TypeOrientation.SOCIO_PRO, "socio_pro": TypeOrientation.SOCIO_PRO,
    "social": TypeOrientation.SOCIAL,
}

#: Contract types as carnet de bord names them (keys.ts) → shared contract type.
CONTRAT: dict[str, TypeContrat] = {
    "cer": TypeContrat.CER, "ppae": TypeContrat.PPAE, "cej": TypeContrat.CEJ, "pacea": TypeContrat.PACEA,
}
