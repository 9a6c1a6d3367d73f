"""The ``api-https`` transport against the real local HTTPS server (tests/support/partner_api.py): partner API answers
landed as one JSON Lines file before the API's side is consumed, orientations pushed exactly once with resumption,
and an i-milo flow run end to end through the hub's real life cycle.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.partner_api import PartnerApi, nir15, partner_api

from connectors.apis.common import ClientHooks
from connectors.apis.i_milo import IMiloClient
from connectors.connections import get_connection
from connectors.http.errors import ApiRetriableError
from connectors.transports.api_landing import ApiLanding, ApiOptions, ApiPushError
from connectors.transports.base import FileExists
from connectors.transports.registry import parse_transport
from spie_hub.core.errors import ConfigurationError
from spie_hub.core.home import HubHome

REPO = Path(__file__).resolve().parent.parent
LANDED = re.compile(r"^(evenements|usagers)_\d{8}T\d{6}Z_[0-9a-f]{12}\.jsonl$")
PUSH = [  # the jsonl_ft_orientation output's lines: NIR on 15 characters, parcours, organisme
    {"pseudonyme": "p1", "nir": nir15("2820251108030"), "date_naissance": "1982-02-01", "parcours": "PSO", "organisme": "CD"},
    {"pseudonyme": "p2", "nir": nir15("2730799404078"), "date_naissance": "1973-07-21", "parcours": "PED", "organisme": "FT"},
    {"pseudonyme": "p3", "nir": nir15("1770393050005"), "date_naissance": "1977-03-23", "parcours": "PED", "organisme": "FT"},
]


class Waits(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PartnerApi]:
    with partner_api(tmp_path) as server:
        monkeypatch.setenv("AIRFLOW_CONN_FT_TEST", json.dumps(server.ft_connection(tentatives=2)))
        monkeypatch.setenv("AIRFLOW_CONN_MILO_TEST", json.dumps(server.milo_connection(tentatives=2)))
        yield server


@pytest.fixture
def home(hub_home: Path) -> Path:
    HubHome.from_env().ensure()
    return hub_home


def transport(home: Path, api: str, ressource: str, **options: Any) -> ApiLanding:
    connexion = "ft-test" if api == "france-travail" else "milo-test"
    opts = ApiOptions(type="api-https", connexion=connexion, api=api, ressource=ressource,
                      **({"intervalle_secondes": 0} | options))
    return ApiLanding(home, opts, hooks=ClientHooks(sleep=Waits()))


def landed_lines(landing: ApiLanding) -> list[dict[str, Any]]:
    lines = []
    for entry in landing.folder.list("*.jsonl"):
        with landing.open(entry.name) as handle:
            lines.extend(json.loads(line) for line in handle)
    return lines


def push(landing: ApiLanding, name: str, lines: list[dict[str, Any]]) -> None:
    with landing.store(name) as handle:
        for line in lines:
            handle.write(json.dumps(line).encode() + b"\n")


# -- options --------------------------------------------------------------------------------------------------------
def test_the_registry_validates_the_api_and_its_resource() -> None:
    options = parse_transport({"type": "api-https", "connexion": "ft-api", "api": "france-travail", "ressource": "usagers"}, "flux x")
    assert isinstance(options, ApiOptions) and options.folder == "atterrissage/ft-api/usagers"
    with pytest.raises(ConfigurationError, match="ressource « evenements » inconnue pour france-travail"):
        parse_transport({"type": "api-https", "connexion": "ft-api", "api": "france-travail", "ressource": "evenements"}, "flux x")
    with pytest.raises(ConfigurationError, match="atterrissage"):
        parse_transport({"type": "api-https", "connexion": "c", "api": "i-milo", "ressource": "evenements",
                         "atterrissage": "../ailleurs"}, "flux x")


# -- i-milo events ----------------------------------------------------------------------------------------------------
def test_i_milo_events_are_landed_in_one_file_with_their_dossier_then_acknowledged(api: PartnerApi, home: Path) -> None:
    api.add_dossier("123456")
    first, gone = api.add_event("123456"), api.add_event("999999", action="DELETE")
    landing = transport(home, "i-milo", "evenements")
    [entry] = landing.list()
    assert LANDED.match(entry.name) and entry.name.startswith("evenements_")
    lines = landed_lines(landing)
    assert [line["evenement"]["id"] for line in lines] == [first["identifiant"], gone["identifiant"]]
    assert lines[0]["dossier"]["accompagnementCEJ"]["accompagnementCEJ"] is True
    assert lines[1]["dossier"] is None  # a dossier i-milo no longer has
    assert api.state.acked == [first["identifiant"], gone["identifiant"]]
    assert landing.list() == [entry]  # nothing new: no second file
    assert len(api.requests("ack")) == 2


def test_an_event_is_acknowledged_only_after_its_landed_file_is_stored(api: PartnerApi, home: Path) -> None:
    api.add_dossier("123456")
    api.add_event("123456")
    landing = transport(home, "i-milo", "evenements")
    order: list[str] = []
    real = IMiloClient(get_connection("milo-test"), ClientHooks(sleep=Waits()))
    original_ack = real.acquitter

    def ack(identifiant: Any) -> None:
        order.append("landed" if landing.folder.list("*.jsonl") else "not-landed")
        original_ack(identifiant)

    real.acquitter = ack  # type: ignore[method-assign]
    landing._client_factory = lambda: real
    landing.list()
    assert order == ["landed"]


def test_an_event_whose_ack_fails_is_landed_again_at_the_next_pass_never_lost(api: PartnerApi, home: Path) -> None:
    api.add_dossier("123456")
    event = api.add_event("123456")
    api.inject("ack", "500", count=2)  # both attempts of the only ack
    landing = transport(home, "i-milo", "evenements")
    with pytest.raises(ApiRetriableError):
        landing.list()
    assert api.state.acked == []
    assert [line["evenement"]["id"] for line in landed_lines(landing)] == [event["identifiant"]]  # stored before the ack
    landing.list()  # the queue still holds it: landed again (same content), then acknowledged
    assert api.state.acked == [event["identifiant"]]
    assert {line["evenement"]["id"] for line in landed_lines(landing)} == {event["identifiant"]}


def test_a_process_killed_between_landing_and_ack_loses_no_event(api: PartnerApi, home: Path) -> None:
    api.add_dossier("123456")
    event = api.add_event("123456")
    script = ("import os; from pathlib import Path; from connectors.transports.api_landing import ApiLanding, ApiOptions; "
              "ApiLanding(Path(os.environ['SPIE_HUB_HOME']), ApiOptions(type='api-https', connexion='milo-test', "
              "api='i-milo', ressource='evenements', intervalle_secondes=0)).list()")
    child = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=120,
                           env=os.environ | {"SPIE_HUB_FAILPOINT": "api-avant-acquittement"})
    assert child.returncode == -9, child.stderr.decode()[-2000:]
    assert api.state.acked == []
    landing = transport(home, "i-milo", "evenements")
    assert [line["evenement"]["id"] for line in landed_lines(landing)] == [event["identifiant"]]
    landing.list()
    assert api.state.acked == [event["identifiant"]]


def test_a_landing_that_fails_midway_stores_nothing_and_acknowledges_nothing(api: PartnerApi, home: Path) -> None:
    api.add_dossier("123456")
    api.add_event("123456")
    api.inject("dossier", "500", count=2)
    landing = transport(home, "i-milo", "evenements")
    with pytest.raises(ApiRetriableError, match="erreur 500"):
        landing.list()
    assert landing.folder.list() == [] and api.state.acked == []
    assert not any((home / "staging" / ".stores").glob("*.tmp"))


def test_the_api_is_asked_at_most_once_per_interval(api: PartnerApi, home: Path) -> None:
    landing = transport(home, "i-milo", "evenements", intervalle_secondes=3600)
    landing.list()
    landing.list()
    assert len(api.requests("evenements")) == 1


# -- France Travail usagers -------------------------------------------------------------------------------------------
def write_demandes(home: Path, name: str, lines: list[str]) -> Path:
    folder = home / "atterrissage" / "ft-test" / "usagers" / "demandes"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_france_travail_usagers_are_landed_from_demandes_files_then_the_demandes_removed(api: PartnerApi, home: Path) -> None:
    demandes = write_demandes(home, "departement.jsonl", [
        json.dumps({"nir": "2820251108030", "date_naissance": "1982-02-01"}),
        json.dumps({"nir": nir15("2730799404078"), "date_naissance": "1973-07-21"}),
        json.dumps({"nir": "2820251108099", "date_naissance": "1982-02-01"}),  # a valid NIR France Travail does not know
        '{"nir": 12',
        json.dumps({"nir": "2820251108030", "date_naissance": "1982-02-01"}),  # asked twice: looked up once
    ])
    landing = transport(home, "france-travail", "usagers")
    [entry] = landing.list()
    assert entry.name.startswith("usagers_") and LANDED.match(entry.name)
    lines = landed_lines(landing)
    assert [(line["codeRetour"], line["resultat"]) for line in lines] == [
        ("S001", "trouve"), ("S002", "non-trouve"), ("S002", "non-trouve"), (None, "demande-invalide")]
    found = lines[0]
    assert found["demande"] == {"nir": "2820251108030", "date_naissance": "1982-02-01"}
    assert found["statut"]["m_contrat"]["m_statut"] == "Inscrit"
    assert [c["code"] for c in found["diagnostic"]["contraintes"]] == ["23", "27", "25"]
    assert found["orientation"][0]["parcours"] == "PSO" and len(found["rendez_vous"]) == 3
    assert "2820251108030" not in lines[3]["motif"]
    assert not demandes.exists()
    assert len(api.requests("recherche")) == 3


def test_a_france_travail_landing_that_fails_keeps_the_demandes_for_the_next_pass(api: PartnerApi, home: Path) -> None:
    demandes = write_demandes(home, "d.jsonl", [json.dumps({"nir": "2820251108030", "date_naissance": "1982-02-01"})])
    api.inject("recherche", "code-retour", value="R999")
    landing = transport(home, "france-travail", "usagers")
    with pytest.raises(ApiRetriableError, match="R999"):
        landing.list()
    assert demandes.exists() and landing.folder.list() == []
    assert len(landing.list()) == 1 and not demandes.exists()


# -- France Travail orientations (recipient) -------------------------------------------------------------------------
def test_orientations_are_pushed_once_each_then_the_file_and_its_answers_appear_in_envois(api: PartnerApi, home: Path) -> None:
    landing = transport(home, "france-travail", "orientations")
    with landing.store("livraison.manifest.json") as handle:
        handle.write(b"{}")
    push(landing, "livraison.jsonl", PUSH)
    assert [e.name for e in landing.list()] == ["livraison.jsonl", "livraison.manifest.json", "livraison.reponses.jsonl"]
    with landing.open("livraison.reponses.jsonl") as handle:
        answers = [json.loads(line) for line in handle]
    assert [(a["ligne"], a["resultat"]) for a in answers] == [(1, "poussee"), (2, "non-trouve"), (3, "poussee")]
    assert [nir for nir, _ in api.state.orientations] == ["2820251108030", "1770393050005"]
    assert api.state.orientations[0][1] == {"origine": "INSCRIPTION_CONSEILLER_CD", "parcours": "PSO", "organisme": "CD"}
    keys = [r.headers["Idempotency-Key"] for r in api.requests("orientation")]
    assert keys == [answers[0]["cle"], answers[2]["cle"]] and len(set(keys)) == 2
    # The person France Travail does not know (S002) was answered, not retried.
    assert len(api.requests("recherche")) == 3
    # The persons pushed are asked back through the usagers landing.
    [asked] = (home / "atterrissage" / "ft-test" / "usagers" / "demandes").iterdir()
    assert [json.loads(line)["date_naissance"] for line in asked.read_text().splitlines()] == ["1982-02-01", "1977-03-23"]
    assert not any((home / "atterrissage" / "ft-test" / "orientations" / "en-cours").iterdir())


def test_a_push_stopped_by_500s_in_the_middle_resumes_after_the_last_answered_line_exactly_once(api: PartnerApi, home: Path) -> None:
    landing = transport(home, "france-travail", "orientations")
    api.inject("orientation", "aucune")
    api.inject("orientation", "500", count=2)  # the second orientation fails both attempts
    with pytest.raises(ApiPushError, match="interrompu après 2 ligne"):
        push(landing, "livraison.jsonl", PUSH)
    assert landing.list() == []  # nothing visible while the push is unfinished
    assert [nir for nir, _ in api.state.orientations] == ["2820251108030"]
    push(landing, "livraison.jsonl", PUSH)  # the delivery's retry: same file, same name
    assert [nir for nir, _ in api.state.orientations] == ["2820251108030", "1770393050005"]
    recherches = [json.loads(r.body)["nir"] for r in api.requests("recherche")]
    assert recherches == [PUSH[0]["nir"], PUSH[1]["nir"], PUSH[2]["nir"], PUSH[2]["nir"]]  # lines 1 and 2 never again
    assert [e.name for e in landing.list()] == ["livraison.jsonl", "livraison.reponses.jsonl"]
    push(landing, "livraison.jsonl", PUSH)  # delivered already: nothing pushed
    assert len(api.state.orientations) == 2


def test_a_line_whose_answer_was_lost_is_sent_again_with_the_same_key_and_applied_once(api: PartnerApi, home: Path) -> None:
    landing = transport(home, "france-travail", "orientations")
    api.inject("orientation", "aucune")
    api.inject("orientation", "500", count=2)
    with pytest.raises(ApiPushError):
        push(landing, "livraison.jsonl", PUSH)
    answers = home / "atterrissage" / "ft-test" / "orientations" / "en-cours" / "livraison.jsonl.reponses.jsonl"
    kept = answers.read_bytes().splitlines(keepends=True)
    answers.write_bytes(kept[0][:-20])  # a crash tore the first answer: line 1 counts as not answered
    push(landing, "livraison.jsonl", PUSH)
    first_keys = [r.headers["Idempotency-Key"] for r in api.requests("orientation")]
    assert first_keys.count(first_keys[0]) == 2  # line 1 sent again, with the same key
    assert [nir for nir, _ in api.state.orientations] == ["2820251108030", "1770393050005"]  # applied once


def test_another_file_under_a_name_being_pushed_is_refused(api: PartnerApi, home: Path) -> None:
    landing = transport(home, "france-travail", "orientations")
    api.inject("recherche", "code-retour", value="R999", count=2)
    with pytest.raises(ApiPushError):
        push(landing, "livraison.jsonl", PUSH)
    with pytest.raises(FileExists):
        push(landing, "livraison.jsonl", PUSH[:1])


# -- end to end: an i-milo flow through the hub's real life cycle ----------------------------------------------------------
def test_an_i_milo_flow_lands_the_events_and_runs_them_through_the_real_life_cycle(
        api: PartnerApi, hub_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spie_hub.registry import clear_cache, get_flow
    from spie_hub.run.lifecycle import pending_inputs, process_inbox_file

    registry = {"flux": {"missions-locales-test": {
        "titre": "Événements i-milo (test)",
        "finalite": "Suivi des jeunes accompagnés par la mission locale",
        "source": {"partenaire": "missions-locales", "format": "jsonl", "mapping": "imilo_evenements",
                   "transport": {"type": "api-https", "connexion": "milo-test", "api": "i-milo", "ressource": "evenements",
                                 "intervalle_secondes": 0, "motif": "evenements_*.jsonl"}},
        "destinataires": {"departement-052": {
            "libelle": "Département (test)", "sortie": "csv_departement",
            "transport": {"type": "dossier-local", "dossier": "outbox/departement-052"},
            "categories_requises": ["identite"],
            "politique": {"identite": {"base": "legale", "article": "Article de test"}},
        }},
    }}}
    path = tmp_path / "flows.yaml"
    path.write_text(yaml.safe_dump(registry, allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("SPIE_HUB_FLOWS", str(path))
    clear_cache()
    try:
        home = HubHome.from_env().ensure()
        api.add_dossier("123456", nom="PETIT", prenom="NOÉ")
        event = api.add_event("123456")
        flow = get_flow("missions-locales-test")
        [ref] = pending_inputs(flow, home)
        assert api.state.acked == [event["identifiant"]]  # landed, then acknowledged
        summary = process_inbox_file("missions-locales-test", ref, home)
        assert summary.statut == "termine", summary.message
        assert (summary.lus, summary.destinataires["departement-052"].livres) == (1, 1)
        delivered = Path(summary.destinataires["departement-052"].fichier)
        assert "PETIT" in delivered.read_text(encoding="utf-8-sig")
        assert pending_inputs(flow, home) == []  # the landed file took the normal life cycle (archived)
    finally:
        clear_cache()
