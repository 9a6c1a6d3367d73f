"""The hardened HTTPS client against a real local HTTPS server playing France Travail and i-milo (tests/support/
partner_api.py): TLS verified with the test CA, every fault the issue names, and no secret anywhere it could leak.

Waits between attempts go through an injected ``sleep`` that records them (the tests never sleep for a backoff);
deadlines and timeouts are real but short (fractions of a second), set through the connection's extras.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.partner_api import PartnerApi, make_certificates, nir15, partner_api

from connectors.apis.common import ClientHooks
from connectors.apis.france_travail import FranceTravailClient, freins
from connectors.apis.i_milo import IMiloClient
from connectors.connections import from_json
from connectors.http.errors import ApiAnswerError, ApiFatalError, ApiRetriableError, redact_url
from connectors.http.pagination import by_range
from connectors.http.session import retry_after_seconds
from spie_hub.core.errors import ConfigurationError

FOUND = ("2820251108030", "1982-02-01")
FOUND_TOO = ("1770393050005", "1977-03-23")
UNKNOWN = ("2730799404078", "1973-07-21")


@pytest.fixture
def api(tmp_path: Path) -> Iterator[PartnerApi]:
    with partner_api(tmp_path) as server:
        yield server


class Waits(list[float]):
    """The injected ``sleep``: records each wait instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def ft(api: PartnerApi, waits: Waits | None = None, connection: dict[str, Any] | None = None, **extra: Any) -> FranceTravailClient:
    data = connection or api.ft_connection(**extra)
    return FranceTravailClient(from_json("ft-test", json.dumps(data), "test"), ClientHooks(sleep=waits if waits is not None else Waits()))


def milo(api: PartnerApi, waits: Waits | None = None, **extra: Any) -> IMiloClient:
    return IMiloClient(from_json("milo-test", json.dumps(api.milo_connection(**extra)), "test"),
                       ClientHooks(sleep=waits if waits is not None else Waits()))


def secrets_of(api: PartnerApi) -> list[str]:
    """Everything that must never appear in a URL, a log line or an error message."""
    tokens = list(api.state.tokens) + list(api.state.jetons)
    return [api.client_secret, api.api_key, *tokens, *(p["nir"] for p in api.people.values()),
            *(nir15(p["nir"]) for p in api.people.values())]


# -- the happy path ----------------------------------------------------------------------------------------------------
def test_a_found_person_comes_with_status_diagnostic_freins_orientations_and_appointments(api: PartnerApi) -> None:
    client = ft(api)
    line = client.usager(*FOUND)
    assert (line["codeRetour"], line["resultat"], line["topIdentiteCertifiee"]) == ("S001", "trouve", "O")
    assert line["statut"]["m_contrat"]["m_statut"] == "Inscrit"
    assert [c["code"] for c in line["diagnostic"]["contraintes"]] == ["23", "27", "25"]
    assert [(f["code_contrainte"], f["frein"]) for f in line["freins"]] == [("23", "mobilite"), ("27", "logement")]
    assert line["orientation"][0]["parcours"] == "PSO"
    assert len(line["rendez_vous"]) == 3
    lookup = json.loads(api.requests("recherche")[0].body)
    assert lookup == {"dateNaissance": "1982-02-01", "nir": "282025110803094"}  # 15 characters: the key computed


def test_the_token_is_asked_with_realm_partenaire_and_the_secret_only_in_the_form_body(api: PartnerApi) -> None:
    ft(api).usager(*FOUND)
    (token_request,) = api.requests("token")
    assert token_request.query == "realm=%2Fpartenaire"
    assert f"client_secret={api.client_secret}" in token_request.body.decode()
    for request in api.requests():
        assert api.client_secret not in request.url
        if request.route != "token":
            assert request.headers["Authorization"].startswith("Bearer ")


def test_one_token_serves_every_request_until_it_expires(api: PartnerApi) -> None:
    client = ft(api)
    client.usager(*FOUND)
    client.usager(*FOUND_TOO)
    assert client.auth.fetched == 1


def test_freins_are_read_from_a_v1_diagnostic_too() -> None:
    v1 = {"contraintesIndividusDto": [{"code": "24", "valeur": "OUI"}, {"code": "29", "valeur": "CLOTUREE"}]}
    assert [f["frein"] for f in freins(v1)] == ["famille"]


# -- authentication ----------------------------------------------------------------------------------------------------
def test_an_expired_token_answered_401_is_refreshed_once_and_the_request_sent_again(api: PartnerApi) -> None:
    client = ft(api)
    client.usager(*FOUND)
    api.inject("diagnostic", "401")
    line = client.usager(*FOUND)
    assert line["diagnostic"] is not None
    assert client.auth.fetched == 2
    statuses = [r.route for r in api.requests()]
    assert statuses.count("diagnostic") == 3  # first pass, the refused one, the one sent again with the new token


def test_a_401_that_persists_after_the_refresh_is_a_fatal_error(api: PartnerApi) -> None:
    client = ft(api)
    api.inject("statut", "401", count=2)
    with pytest.raises(ApiFatalError, match=r"authentification refusée \(401\)"):
        client.usager(*FOUND)
    assert client.auth.fetched == 2  # one refresh, not a loop


def test_credentials_refused_by_the_token_server_are_a_configuration_error_without_the_secret(api: PartnerApi) -> None:
    connection = api.ft_connection()
    connection["password"] = "mauvais-secret-123"
    with pytest.raises(ConfigurationError, match="identifiants OAuth2 refusés") as caught:
        ft(api, connection=connection).usager(*FOUND)
    assert "mauvais-secret-123" not in str(caught.value)
    assert api.client_secret not in str(caught.value)


def test_i_milo_sends_the_api_key_in_a_header_never_in_the_url(api: PartnerApi) -> None:
    api.add_dossier("123456")
    api.add_event("123456")
    client = milo(api)
    (event,) = client.evenements()
    assert client.dossier(event["idDossier"])["accompagnementCEJ"]["accompagnementCEJ"] is True
    client.acquitter(event["identifiant"])
    assert client.evenements() == []
    for request in api.requests():
        assert request.headers["X-Gravitee-Api-Key"] == api.api_key
        assert api.api_key not in request.url


def test_a_refused_api_key_is_a_fatal_error(api: PartnerApi) -> None:
    connection = api.milo_connection()
    connection["password"] = "cle-fausse"
    client = IMiloClient(from_json("milo", json.dumps(connection), "test"), ClientHooks(sleep=Waits()))
    with pytest.raises(ApiFatalError, match=r"authentification refusée \(401\)") as caught:
        client.evenements()
    assert "cle-fausse" not in str(caught.value)


# -- retries -----------------------------------------------------------------------------------------------------------
def test_a_429_waits_the_seconds_retry_after_gives(api: PartnerApi) -> None:
    waits = Waits()
    api.inject("statut", "429", value=7)
    assert ft(api, waits).usager(*FOUND)["statut"] is not None
    assert waits == [7.0]


def test_a_429_retry_after_longer_than_the_cap_waits_the_cap(api: PartnerApi) -> None:
    waits = Waits()
    api.inject("statut", "429", value=86400)
    ft(api, waits, retry_after_max=30).usager(*FOUND)
    assert waits == [30.0]


def test_a_retry_after_given_as_an_http_date_is_read_as_the_seconds_until_it() -> None:
    now = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("Tue, 01 Dec 2026 10:00:45 GMT", 120, lambda: now) == 45.0
    assert retry_after_seconds("Tue, 01 Dec 2026 12:00:00 GMT", 120, lambda: now) == 120.0
    assert retry_after_seconds("Tue, 01 Dec 2026 09:00:00 GMT", 120, lambda: now) == 0.0
    assert retry_after_seconds("bientôt", 120, lambda: now) is None


def test_a_500_is_retried_with_a_growing_backoff_then_succeeds(api: PartnerApi) -> None:
    waits = Waits()
    api.inject("diagnostic", "500", count=2)
    assert ft(api, waits, attente_base=1, tentatives=4).usager(*FOUND)["diagnostic"] is not None
    assert len(waits) == 2
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0  # equal jitter within each doubling ceiling


def test_a_500_that_never_stops_is_a_retriable_french_error_after_the_allowed_attempts(api: PartnerApi) -> None:
    waits = Waits()
    api.inject("statut", "500", value=503, count=10)
    with pytest.raises(ApiRetriableError, match=r"après 3 tentative\(s\)") as caught:
        ft(api, waits, tentatives=3).usager(*FOUND)
    assert caught.value.status == 503
    assert len(waits) == 2
    assert len(api.requests("statut")) == 3


def test_a_server_that_does_not_answer_in_time_is_cut_by_the_read_timeout_then_retried(api: PartnerApi) -> None:
    waits = Waits()
    api.inject("lecture-orientation", "sommeil", value=5)
    line = ft(api, waits, delai_lecture=0.3, tentatives=2).usager(*FOUND)
    assert line["orientation"][0]["parcours"] == "PSO"
    assert len(waits) == 1
    assert len(api.requests("lecture-orientation")) == 2


def test_a_connection_closed_without_an_answer_is_retried(api: PartnerApi) -> None:
    waits = Waits()
    api.inject("statut", "coupure")
    assert ft(api, waits).usager(*FOUND)["statut"] is not None
    assert len(waits) == 1


# -- answers that never finish, never end, or are not what they claim ----------------------------------------------
def test_a_body_that_trickles_forever_is_cut_at_the_total_deadline(api: PartnerApi) -> None:
    api.inject("rendez-vous", "filet")
    with pytest.raises(ApiRetriableError, match="réponse jamais terminée"):
        ft(api, delai_total=0.8, delai_lecture=5, tentatives=1).usager(*FOUND)


def test_a_body_that_never_ends_is_cut_at_the_size_cap(api: PartnerApi) -> None:
    api.inject("diagnostic", "sans-fin")
    with pytest.raises(ApiFatalError, match=r"réponse trop volumineuse \(plus de 1048576 octets\)"):
        ft(api, taille_max=1 << 20).usager(*FOUND)


def test_a_declared_length_above_the_cap_is_refused_before_reading(api: PartnerApi) -> None:
    api.inject("diagnostic", "filet")  # announces 1 000 000 bytes
    with pytest.raises(ApiFatalError, match="1000000 octets annoncés"):
        ft(api, taille_max=1000, delai_total=60).usager(*FOUND)


def test_malformed_json_is_a_fatal_french_error_naming_the_endpoint_never_the_body(api: PartnerApi) -> None:
    api.inject("recherche", "json-malforme")
    with pytest.raises(ApiFatalError) as caught:
        ft(api).usager(*FOUND)
    message = str(caught.value)
    assert message == ("API France Travail : réponse JSON illisible sur POST https://127.0.0.1:"
                       f"{api.port}/partenaire/rechercher-usager/v2/usagers/par-datenaissance-et-nir")
    assert "jetonUsager" not in message


def test_an_html_page_instead_of_json_is_refused_by_its_content_type(api: PartnerApi) -> None:
    api.inject("evenements", "html")
    with pytest.raises(ApiFatalError, match="réponse de type « text/html » au lieu de JSON") as caught:
        milo(api).evenements()
    assert "indisponible" not in str(caught.value)  # the page's text is never quoted


def test_a_redirect_to_another_host_is_refused_in_french(api: PartnerApi) -> None:
    api.inject("diagnostic", "redirection-externe")
    with pytest.raises(ApiFatalError, match="redirection vers un autre hôte refusée") as caught:
        ft(api).usager(*FOUND)
    assert "autre-hote.invalid" not in str(caught.value)  # the target is the partner's text: never shown
    assert len(api.requests("diagnostic")) == 1  # never retried, never followed


def test_a_redirect_to_the_same_host_is_followed(api: PartnerApi) -> None:
    api.inject("statut", "redirection-interne")
    assert ft(api).usager(*FOUND)["statut"]["m_contrat"]["m_statut"] == "Inscrit"
    assert len(api.requests("statut")) == 2


# -- TLS -------------------------------------------------------------------------------------------------------------------
def test_a_server_certificate_from_another_authority_is_refused(api: PartnerApi, tmp_path: Path) -> None:
    other = make_certificates(tmp_path / "autre", "Autre")
    with pytest.raises(ApiFatalError, match="connexion TLS refusée"):
        ft(api, ca_file=str(other.ca_file)).usager(*FOUND)
    assert api.requests() == []


def test_plain_http_is_refused(api: PartnerApi) -> None:
    connection = api.ft_connection()
    connection["host"] = f"http://127.0.0.1:{api.port}"
    with pytest.raises(ConfigurationError, match="seul https:// est accepté"):
        ft(api, connection=connection)


def test_a_missing_ca_file_is_a_configuration_error(api: PartnerApi, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="ca_file"):
        ft(api, ca_file=str(tmp_path / "absent.pem"))


# -- France Travail codeRetour ---------------------------------------------------------------------------------------------
def test_not_found_and_several_found_are_answers_about_the_person_not_errors(api: PartnerApi) -> None:
    client = ft(api)
    assert client.usager(*UNKNOWN)["resultat"] == "non-trouve"
    api.inject("recherche", "code-retour", value="S003")
    line = client.usager(*FOUND)
    assert (line["codeRetour"], line["resultat"], line["statut"]) == ("S003", "plusieurs", None)
    assert api.requests("statut") == []


def test_a_validation_error_code_is_a_fatal_error_and_unavailable_a_retriable_one(api: PartnerApi) -> None:
    client = ft(api)
    api.inject("recherche", "code-retour", value="R997")
    with pytest.raises(ApiAnswerError, match="codeRetour R997 .erreur de validation") as caught:
        client.usager(*FOUND)
    assert caught.value.code == "R997"
    api.inject("recherche", "code-retour", value="R999")
    with pytest.raises(ApiRetriableError, match="codeRetour R999"):
        client.usager(*FOUND)


def test_an_invalid_nir_is_refused_before_any_call_without_repeating_it(api: PartnerApi) -> None:
    with pytest.raises(Exception, match="clé de contrôle") as caught:
        ft(api).rechercher_usager("282025110803000", "1982-02-01")
    assert "2820251108030" not in str(caught.value)
    assert api.requests("recherche") == []


# -- pagination, idempotency ---------------------------------------------------------------------------------------------
def test_range_pagination_reads_every_page(api: PartnerApi) -> None:
    api.rdv_count = 7
    client = ft(api)
    jeton = client.rechercher_usager(*FOUND).jeton
    assert jeton is not None
    items = list(by_range(client.session, "/rendez-vous-partenaire/v1/rendez-vous", headers=client._headers(jeton), size=3))
    assert [i["id"] for i in items] == [f"rdv-{n}" for n in range(7)]
    assert [r.query for r in api.requests("rendez-vous")] == ["range=0-2", "range=3-5", "range=6-8"]


def test_an_orientation_written_twice_with_the_same_idempotency_key_is_applied_once(api: PartnerApi) -> None:
    client = ft(api)
    jeton = client.rechercher_usager(*FOUND).jeton
    assert jeton is not None
    first = client.ecrire_orientation(jeton, "PSO", idempotency_key="cle-1")
    second = client.ecrire_orientation(jeton, "PSO", idempotency_key="cle-1")
    assert first.status == second.status == 201
    assert first.data == second.data
    assert len(api.state.orientations) == 1


# -- nothing leaks ---------------------------------------------------------------------------------------------------------
def test_no_secret_or_nir_in_urls_logs_or_errors_whatever_happens(api: PartnerApi, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []
    client = ft(api, tentatives=2)
    for route, kind, value in [("diagnostic", "401", None), ("statut", "429", 1), ("rendez-vous", "500", None),
                               ("recherche", "json-malforme", None), ("lecture-orientation", "redirection-externe", None),
                               ("recherche", "code-retour", "R997")]:
        api.inject(route, kind, value)
        for person in (FOUND, UNKNOWN):
            try:
                client.usager(*person)
            except Exception as error:  # noqa: BLE001 - every error message is checked below
                errors.append(str(error))
                errors.append(repr(error))
    api.add_dossier("123456")
    api.add_event("123456")
    milo(api).evenements()
    assert errors, "the faults must have produced errors"
    text = "\n".join([r.getMessage() for r in caplog.records] + errors + [repr(client.auth)])
    for secret in secrets_of(api):
        assert secret not in text
    for request in api.requests():
        for secret in secrets_of(api):
            assert secret not in request.url
    ours = [r.getMessage() for r in caplog.records if r.name == "spie_hub.http"]
    assert ours and all(m.split(" ")[0] in ("GET", "POST") for m in ours)


def test_urls_are_redacted_of_user_info_query_values_and_identifiers() -> None:
    url = "https://user:motdepasse@api.example.fr:8443/milo/sue/dossiers/123456?cle=abc&realm=/partenaire"
    assert redact_url(url) == "https://api.example.fr:8443/milo/sue/dossiers/{id}?cle=…&realm=…"
    assert redact_url("https://h/partenaire/rechercher-usager/v2/usagers/par-datenaissance-et-nir") == (
        "https://h/partenaire/rechercher-usager/v2/usagers/par-datenaissance-et-nir")
    assert redact_url("https://h/operateurs/events/63569521bdd5161673153f9f/ack") == "https://h/operateurs/events/{id}/ack"
