"""France Travail partner APIs (shared/formats/README.md §3): OAuth2 client credentials (``realm=/partenaire``), user
lookup by NIR + date de naissance giving a ``jetonUsager``, then, with that token: diagnostic argumenté (contraintes →
freins), orientation read and write (PED / PSO / PSP), rendez-vous partenaire, registration status.

Connection (``connectors/connections.py``): ``host`` (and ``port``) of the API, ``login`` = client id, ``password`` =
client secret; extras ``token_url`` (required), ``scopes`` (text or list), ``realm`` (default ``/partenaire``),
``chemin_base`` (default ``/partenaire``), ``ca_file``, agent headers ``agent_nom`` / ``agent_prenom``, and the HTTP
settings of ``HttpSettings.EXTRAS``.

``codeRetour`` of the lookup: ``S001`` found (a token), ``S002`` not found and ``S003`` several found are *answers*
about one person (recorded, not retried); ``R…`` are errors (``R998``/``R999`` transient, the others fatal).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from connectors.apis.common import ClientHooks, open_session
from connectors.connections import PartnerConnection
from connectors.http.auth import OAuth2ClientCredentials
from connectors.http.errors import ApiAnswerError, ApiFatalError, ApiRetriableError
from connectors.http.pagination import by_range
from connectors.http.session import ApiResponse
from schemas.crosswalks import FREIN_DEPUIS_FT_CONTRAINTE
from spie_hub.core.errors import RecordError
from spie_hub.core.nir import cle_nir, normaliser_nir

PARTNER = "France Travail"
DEFAULT_SCOPES = ("api_rechercher-usagerv2 rechercheusager profil_accedant api_diagnosticargumentev1 "
                  "api_orientationusagerv1 orientationusager api_rendez-vous-partenairev1 gererRDV")

PATH_RECHERCHE = "/rechercher-usager/v2/usagers/par-datenaissance-et-nir"
PATH_DIAGNOSTIC = "/diagnosticargumente/v4/dossiers"
PATH_LECTURE_ORIENTATION = "/orientationusager/v1/lectureOrientation"
PATH_ORIENTATION = "/orientationusager/v1/orientation"
PATH_RENDEZ_VOUS = "/rendez-vous-partenaire/v1/rendez-vous"
PATH_STATUT = "/contrat-usager/v2/contrat"

#: Lookup answers about one person → the outcome recorded in a landed line.
RESULTAT = {"S001": "trouve", "S002": "non-trouve", "S003": "plusieurs"}
#: ``R…`` codes worth another pass later (a service behind the API is down).
R_TRANSIENT = {"R998", "R999"}
R_TEXT = {"R001": "accès non autorisé", "R997": "erreur de validation de la demande",
          "R998": "un service de France Travail a répondu en erreur", "R999": "service indisponible"}

#: A ``codeRetour`` the hub may show: a letter and three digits. Anything else is the partner's free text (it may echo
#: what it was sent: a NIR, a token) and is never copied into an error.
CODE_SHOWN = re.compile(r"^[RS][0-9]{3}$")

PARCOURS = ("PED", "PSO", "PSP")
#: WebRSA's names of the same parcours, accepted in a staged orientation line.
PARCOURS_WEBRSA = {"EMPLOI": "PED", "SOCIOPRO": "PSO", "SOCIAL": "PSP"}


@dataclass(frozen=True)
class Recherche:
    """The lookup's answer. ``jeton`` only for ``S001``; never shown (``repr`` hides it)."""

    code_retour: str
    resultat: str
    jeton: str | None = None
    #: ``topIdentiteCertifiee`` as answered (``O`` / ``N``), None when absent.
    certifiee: str | None = None

    def __repr__(self) -> str:
        return f"Recherche(code_retour={self.code_retour!r}, resultat={self.resultat!r})"


def nir15(nir: str) -> str:
    """The 15-character NIR France Travail expects (13 + key); ``RecordError`` (no NIR in it) when invalid."""
    nir13 = normaliser_nir(nir)
    return f"{nir13}{cle_nir(nir13):02d}"


def date_iso(value: Any) -> str:
    """A birth date as ``AAAA-MM-JJ`` (``JJ/MM/AAAA`` accepted)."""
    text = str(value or "").strip()
    if len(text) == 10 and text[2] == "/" and text[5] == "/":
        text = f"{text[6:]}-{text[3:5]}-{text[:2]}"
    if len(text) != 10 or text[4] != "-" or text[7] != "-" or not (text[:4] + text[5:7] + text[8:]).isdigit():
        raise RecordError("Date de naissance invalide (AAAA-MM-JJ attendu)")
    return text


def freins(diagnostic: Any) -> list[dict[str, Any]]:
    """The contraintes answered ``OUI`` in a diagnostic (v4 ``thematiqueContrainte`` or v1 ``contraintesIndividusDto``)
    as shared-schema freins (``schemas/crosswalks.py``)."""
    if not isinstance(diagnostic, Mapping):
        return []
    thematique = diagnostic.get("thematiqueContrainte", diagnostic)
    contraintes = thematique.get("contraintes") if isinstance(thematique, Mapping) else None
    if contraintes is None:
        v1 = diagnostic.get("contraintesIndividusDto")
        contraintes = v1.get("contraintes") if isinstance(v1, Mapping) else v1
    found = []
    for item in contraintes if isinstance(contraintes, list) else []:
        if not isinstance(item, Mapping) or item.get("valeur") != "OUI":
            continue
        frein = FREIN_DEPUIS_FT_CONTRAINTE.get(str(item.get("code")))
        if frein is None:
            continue
        found.append({"code_contrainte": str(item.get("code")), "frein": frein.value, "impact": item.get("impact"),
                      "prioritaire": item.get("estPrioritaire"),
                      "date": item.get("dateExploration") or item.get("date")})
    return found


class FranceTravailClient:
    api: ClassVar[str] = "france-travail"

    def __init__(self, connection: PartnerConnection, hooks: ClientHooks | None = None) -> None:
        token_url = connection.required("token_url")
        scopes = connection.setting("scopes", DEFAULT_SCOPES)
        if isinstance(scopes, list):
            scopes = " ".join(str(s) for s in scopes)
        self.auth = OAuth2ClientCredentials(str(token_url), connection.login or "", connection.password or "", str(scopes),
                                            realm=connection.setting("realm", "/partenaire"), conn_id=connection.conn_id)
        self.session = open_session(connection, PARTNER, self.auth, "/partenaire", hooks)
        self.agent = {"pa-identifiant-agent": "BATCH",
                      "pa-nom-agent": str(connection.setting("agent_nom", "HUB")),
                      "pa-prenom-agent": str(connection.setting("agent_prenom", "SPIE"))}

    def close(self) -> None:
        self.session.close()

    def _headers(self, jeton: str | None = None, **more: str) -> dict[str, str]:
        headers = dict(self.agent)
        if jeton is not None:
            headers["ft-jeton-usager"] = jeton
        return headers | more

    # -- lookup ---------------------------------------------------------------------------------------------------
    def rechercher_usager(self, nir: str, date_naissance: str) -> Recherche:
        body = {"dateNaissance": date_iso(date_naissance), "nir": nir15(nir)}
        # France Travail answers business errors in the body (codeRetour), sometimes with a 4xx status.
        response = self.session.request("POST", PATH_RECHERCHE, json_body=body, headers=self._headers(),
                                        accept=(200, 400, 403, 404))
        data = response.data if isinstance(response.data, Mapping) else {}
        code = str(data.get("codeRetour") or "")
        if code in RESULTAT:
            jeton = data.get("jetonUsager") if code == "S001" else None
            if code == "S001" and (not isinstance(jeton, str) or not jeton):
                raise ApiFatalError(f"API {PARTNER} : usager trouvé sans jeton sur {response.endpoint}",
                                    endpoint=response.endpoint)
            certified = data.get("topIdentiteCertifiee")
            return Recherche(code, RESULTAT[code], jeton, certified if certified in ("O", "N") else None)
        if response.status != 200 and not code:
            raise ApiFatalError(f"API {PARTNER} : réponse {response.status} sans codeRetour sur {response.endpoint}",
                                status=response.status, endpoint=response.endpoint)
        if not CODE_SHOWN.match(code):
            code = "inattendu"  # the partner's free text: never shown, never kept
            shown = "code inattendu"
        else:
            shown = f"codeRetour {code} ({R_TEXT.get(code, 'code inconnu')})"
        message = f"API {PARTNER} : recherche d'usager en erreur, {shown} sur {response.endpoint}"
        if code not in R_TRANSIENT:
            raise ApiAnswerError(message, code=code, status=response.status, endpoint=response.endpoint)
        raise ApiRetriableError(message, status=response.status, endpoint=response.endpoint)

    # -- reads with the person's token ------------------------------------------------------------------------------
    def diagnostic(self, jeton: str) -> Any:
        return self.session.request("GET", PATH_DIAGNOSTIC, headers=self._headers(jeton), accept=(200, 204, 404)).data

    def orientations(self, jeton: str, etat: str = "OUVERT") -> list[Any]:
        data = self.session.request("GET", PATH_LECTURE_ORIENTATION, params={"etatOrientation": etat},
                                    headers=self._headers(jeton), accept=(200, 204, 404)).data
        return data if isinstance(data, list) else ([] if data is None else [data])

    def rendez_vous(self, jeton: str) -> list[Any]:
        # One person's appointments: a few pages at most; the whole list is kept in the landed line, so bounded.
        return list(by_range(self.session, PATH_RENDEZ_VOUS, headers=self._headers(jeton), size=50, max_pages=40,
                             max_items=2000, max_bytes=20 << 20))

    def statut(self, jeton: str) -> Any:
        """The registration status as France Travail gives it (``{"m_contrat": {…}}``), None when it has none."""
        return self.session.request("GET", PATH_STATUT, headers=self._headers(jeton), accept=(200, 204, 404)).data

    def usager(self, nir: str, date_naissance: str) -> dict[str, Any]:
        """Everything the hub lands about one person (the line mappings/ft_api_usagers.yaml reads): the lookup's
        outcome, then (found) the registration status, the diagnostic's contraintes (theme 7) with their freins, the
        orientations and the partner appointments."""
        found = self.rechercher_usager(nir, date_naissance)
        line: dict[str, Any] = {"codeRetour": found.code_retour, "resultat": found.resultat,
                                "topIdentiteCertifiee": found.certifiee, "statut": None, "diagnostic": None,
                                "freins": [], "orientation": [], "rendez_vous": []}
        if found.jeton is None:
            return line
        line["statut"] = self.statut(found.jeton)
        diagnostic = self.diagnostic(found.jeton)
        # v4 answers the whole dossier: the contraintes (freins) are its theme 7, which is what is landed.
        if isinstance(diagnostic, Mapping) and isinstance(diagnostic.get("thematiqueContrainte"), Mapping):
            line["diagnostic"] = diagnostic["thematiqueContrainte"]
        else:
            line["diagnostic"] = diagnostic
        line["freins"] = freins(diagnostic)
        line["orientation"] = self.orientations(found.jeton)
        line["rendez_vous"] = self.rendez_vous(found.jeton)
        return line

    # -- write ------------------------------------------------------------------------------------------------------
    def ecrire_orientation(self, jeton: str, parcours: str, *, idempotency_key: str, origine: str = "INSCRIPTION_CONSEILLER_CD",
                           organisme: str = "CD", extra: Mapping[str, Any] | None = None) -> ApiResponse:
        if parcours not in PARCOURS:
            raise RecordError(f"Parcours « {parcours} » inconnu (PED, PSO ou PSP attendu)")
        body = {"origine": origine, "parcours": parcours, "organisme": organisme, **(extra or {})}
        return self.session.request("POST", PATH_ORIENTATION, json_body=body, accept=(200, 201),
                                    headers=self._headers(jeton, **{"Idempotency-Key": idempotency_key}))

