"""The attacker's findings on the HTTPS partner APIs (briefs/findings/api), kept as regression tests against the real
local HTTPS server (tests/support/partner_api.py): partner text never echoed, redirected writes never followed,
token lifetimes clamped, endless answers bounded, one person's fatal answer never blocking a pass, and an event or a
demande never landed twice after a partial acknowledgement.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.partner_api import PartnerApi, nir15, partner_api

from connectors.apis.common import ClientHooks
from connectors.apis.france_travail import FranceTravailClient
from connectors.connections import get_connection
from connectors.http.errors import ApiError
from connectors.transports.api_landing import ApiLanding, ApiOptions
from connectors.transports.local import LocalFolder
from spie_hub.core.home import HubHome

NIR13, BIRTH = "2820251108030", "1982-02-01"
PEOPLE = [("2820251108030", "1982-02-01"), ("2730799404078", "1973-07-21"), ("1770393050005", "1977-03-23")]


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[PartnerApi]:
    extra: dict[str, Any] = getattr(request, "param", {})
    with partner_api(tmp_path) as server:
        monkeypatch.setenv("AIRFLOW_CONN_FT_TEST", json.dumps(server.ft_connection(tentatives=1, **extra)))
        monkeypatch.setenv("AIRFLOW_CONN_MILO_TEST", json.dumps(server.milo_connection(tentatives=1)))
        yield server


@pytest.fixture
def home(hub_home: Path) -> Path:
    HubHome.from_env().ensure()
    return hub_home


def client() -> FranceTravailClient:
    return FranceTravailClient(get_connection("ft-test"), ClientHooks(sleep=lambda s: None))


def transport(home: Path, api: str, ressource: str) -> ApiLanding:
    connexion = "ft-test" if api == "france-travail" else "milo-test"
    return ApiLanding(home, ApiOptions(type="api-https", connexion=connexion, api=api, ressource=ressource,
                                       intervalle_secondes=0), hooks=ClientHooks(sleep=lambda s: None))


def _call(function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except ApiError as error:
        return error


# -- 3: partner text echoed in errors ----------------------------------------------------------------------------
def test_a_codeRetour_echoing_the_request_never_reaches_the_error(api: PartnerApi) -> None:
    def recherche(h: Any, body: bytes, **_: Any) -> None:
        if not api._bearer_ok(h):
            return
        asked = json.loads(body)  # the partner's validation error names the field value it refused
        api._json(h, 400, {"codeRetour": f"R997 nir={asked['nir']} secret={api.client_secret}", "message": "x"})

    api._r_recherche = recherche  # type: ignore[method-assign]
    with pytest.raises(ApiError) as caught:
        client().rechercher_usager(NIR13, BIRTH)
    text = str(caught.value)
    assert nir15(NIR13) not in text and api.client_secret not in text, text
    assert "code inattendu" in text


def test_a_refused_redirect_never_shows_the_partner_chosen_host(api: PartnerApi) -> None:
    def statut(h: Any, **_: Any) -> None:
        api._raw(h, 302, b"", "text/plain", {"Location": f"https://nir-{nir15(NIR13)}.exfiltre.invalid/x"})

    api._r_statut = statut  # type: ignore[method-assign]
    ft = client()
    jeton = ft.rechercher_usager(NIR13, BIRTH).jeton
    assert jeton is not None
    with pytest.raises(ApiError) as caught:
        ft.statut(jeton)
    assert nir15(NIR13) not in str(caught.value) and "exfiltre" not in str(caught.value), str(caught.value)


# -- 4: a redirected write -------------------------------------------------------------------------------------------
def test_a_redirected_write_is_never_followed_nor_recorded_as_pushed(api: PartnerApi, home: Path) -> None:
    def orientation(h: Any, **_: Any) -> None:  # the gateway sends writes elsewhere (same host)
        api._raw(h, 302, b"", "text/plain",
                 {"Location": f"https://127.0.0.1:{api.port}/partenaire/orientationusager/v1/lectureOrientation"})

    api._r_orientation = orientation  # type: ignore[method-assign]
    landing = transport(home, "france-travail", "orientations")
    line = {"nir": nir15(NIR13), "date_naissance": BIRTH, "parcours": "PSO", "organisme": "CD"}
    try:
        with landing.store("o.jsonl") as handle:
            handle.write(json.dumps(line).encode() + b"\n")
    except Exception:  # noqa: BLE001, S110 - refusing is an acceptable outcome
        pass
    assert api.state.orientations == []  # France Travail has nothing
    assert api.requests("lecture-orientation") == [], "the POST was followed as a GET"
    recorded = []
    for answers in (home / "atterrissage/ft-test/orientations").rglob("o.reponses.jsonl"):
        recorded += [json.loads(x) for x in answers.read_text().splitlines()]
    assert not any(a.get("resultat") == "poussee" for a in recorded), f"recorded as pushed: {recorded}"


# -- 6: token lifetime -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lifetime", [30, 0, -5, "NaN", "1e999"])
def test_a_short_or_unreadable_token_lifetime_does_not_fetch_a_token_per_request(api: PartnerApi, lifetime: Any) -> None:
    def token(h: Any, **_: Any) -> None:
        value = secrets.token_urlsafe(24)
        with api.lock:
            api.state.tokens[value] = time.monotonic() + 3600
        api._raw(h, 200, (f'{{"access_token": "{value}", "token_type": "Bearer", "expires_in": {lifetime}}}').encode(),
                 "application/json")

    api._r_token = token  # type: ignore[method-assign]
    ft = client()
    for _ in range(5):
        ft.rechercher_usager("2730799404078", "1973-07-21")
    assert len(api.requests("token")) <= 2, f"{len(api.requests('token'))} tokens for 5 requests"


# -- 5: endless answers ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("api", [{"delai_total": 1, "delai_lecture": 0.5}], indirect=True)
def test_headers_trickled_byte_by_byte_are_cut_at_the_total_deadline(api: PartnerApi) -> None:
    def statut(h: Any, **_: Any) -> None:
        h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Filet: ")
        h.wfile.flush()
        end = time.monotonic() + 8
        try:
            while time.monotonic() < end and not api.stopping.is_set():
                h.wfile.write(b"a")
                h.wfile.flush()
                time.sleep(0.1)  # well within the 0.5 s read timeout
            h.wfile.write(b"\r\nContent-Length: 2\r\n\r\n{}")
        except OSError:
            pass  # the client hung up: what is expected
        h.close_connection = True

    api._r_statut = statut  # type: ignore[method-assign]
    ft = client()
    jeton = ft.rechercher_usager(NIR13, BIRTH).jeton
    outcome: list[Any] = []
    start = time.monotonic()
    worker = threading.Thread(target=lambda: outcome.append(_call(ft.statut, jeton)), daemon=True)
    worker.start()
    worker.join(20)
    elapsed = time.monotonic() - start
    # delai_total = 1 s (one attempt): a bound of 3 s is generous.
    assert elapsed < 3, f"one attempt took {elapsed:.1f} s with a 1 s total deadline (outcome: {outcome})"
    assert outcome and isinstance(outcome[0], ApiError)


def test_a_pagination_that_never_advances_is_stopped_early(api: PartnerApi) -> None:
    def rendez_vous(h: Any, **_: Any) -> None:
        if api._person(h) is None:
            return
        api._json(h, 206, [{"id": "rdv-0", "date": "2025-03-10T09:00:00", "motif": "ACC", "statut": "PRIS",
                            "pad": "x" * 2000}], {"Content-Range": "rendez-vous 0-0/*"})

    api._r_rendez_vous = rendez_vous  # type: ignore[method-assign]
    ft = client()
    jeton = ft.rechercher_usager(NIR13, BIRTH).jeton
    result = _call(ft.rendez_vous, jeton)
    asked = len(api.requests("rendez-vous"))
    assert asked <= 3, (f"{asked} requests for the same page; result: "
                        f"{type(result).__name__} of {len(result) if isinstance(result, list) else '-'} duplicate items")


# -- 1: one person's fatal answer ---------------------------------------------------------------------------------------
def poison(api: PartnerApi, nir13: str, code: str = "R997") -> None:
    """France Travail answers a validation error for ONE person, every time (her data, not the service)."""
    original = api._r_recherche

    def recherche(h: Any, body: bytes, forced_code: str | None = None, **kw: Any) -> None:
        asked = json.loads(body)
        return original(h, body=body, forced_code=code if asked.get("nir") == nir15(nir13) else forced_code, **kw)

    api._r_recherche = recherche  # type: ignore[method-assign]


def test_one_person_answered_R997_never_blocks_the_usagers_landing(api: PartnerApi, home: Path) -> None:
    poison(api, PEOPLE[1][0])
    landing = transport(home, "france-travail", "usagers")
    demandes = home / "atterrissage/ft-test/usagers/demandes"
    demandes.mkdir(parents=True)
    (demandes / "d.jsonl").write_text("".join(json.dumps({"nir": n, "date_naissance": d}) + "\n" for n, d in PEOPLE))
    landing.list()
    assert list(demandes.iterdir()) == []  # consumed
    (landed,) = (home / "atterrissage/ft-test/usagers").glob("usagers_*.jsonl")
    lines = [json.loads(x) for x in landed.read_text().splitlines()]
    assert [line["resultat"] for line in lines] == ["trouve", "erreur", "trouve"]
    assert lines[1]["codeRetour"] == "R997" and nir15(PEOPLE[1][0]) not in lines[1]["motif"]


def test_a_service_wide_error_still_stops_the_usagers_landing_and_keeps_the_demandes(api: PartnerApi, home: Path) -> None:
    poison(api, PEOPLE[1][0], "R999")
    landing = transport(home, "france-travail", "usagers")
    demandes = home / "atterrissage/ft-test/usagers/demandes"
    demandes.mkdir(parents=True)
    (demandes / "d.jsonl").write_text("".join(json.dumps({"nir": n, "date_naissance": d}) + "\n" for n, d in PEOPLE))
    with pytest.raises(ApiError):
        landing.list()
    assert [p.name for p in demandes.iterdir()] == ["d.jsonl"]
    assert not list((home / "atterrissage/ft-test/usagers").glob("usagers_*.jsonl"))


def test_one_line_answered_R997_never_blocks_the_rest_of_a_push(api: PartnerApi, home: Path) -> None:
    poison(api, PEOPLE[1][0])
    landing = transport(home, "france-travail", "orientations")
    lines = [{"nir": nir15(n), "date_naissance": d, "parcours": "PED", "organisme": "CD"} for n, d in PEOPLE]
    with landing.store("o.jsonl") as handle:
        for line in lines:
            handle.write(json.dumps(line).encode() + b"\n")
    pushed = [nir for nir, _ in api.state.orientations]
    assert len(pushed) == 2 and (PEOPLE[2][0] in pushed or nir15(PEOPLE[2][0]) in pushed), pushed
    answers = home / "atterrissage/ft-test/orientations/envois/o.reponses.jsonl"
    recorded = [json.loads(x) for x in answers.read_text().splitlines()]
    assert [a["resultat"] for a in recorded] == ["poussee", "erreur", "poussee"]


def test_one_hostile_event_never_blocks_the_i_milo_queue(api: PartnerApi, home: Path) -> None:
    api.add_dossier("123456")
    good = api.add_event("123456")
    with api.lock:  # one event whose idDossier is not an id (a path, a partner bug)
        api.state.events.append({"identifiant": "ev2", "idDossier": "../../admin", "type": "DOSSIER",
                                 "action": "UPDATE", "idType": 1, "date": "2025-03-01T08:00:00Z"})
    transport(home, "i-milo", "evenements").list()
    assert good["identifiant"] in api.state.acked and "ev2" in api.state.acked
    (landed,) = (home / "atterrissage/milo-test/evenements").glob("evenements_*.jsonl")
    lines = [json.loads(x) for x in landed.read_text().splitlines()]
    assert lines[0]["dossier"] is not None and lines[1]["dossier"] is None and "idDossier invalide" in lines[1]["motif"]


# -- 2: a partial acknowledgement ---------------------------------------------------------------------------------------
def test_an_event_is_landed_in_one_file_only_even_when_an_ack_fails(api: PartnerApi, home: Path) -> None:
    for dossier in ("100001", "100002", "100003"):
        api.add_dossier(dossier)
        api.add_event(dossier)
    api.inject("ack", "aucune")            # first ack goes through
    api.inject("ack", "500", count=1)      # second ack: a 500 (or the worker is killed here)
    landing = transport(home, "i-milo", "evenements")
    with pytest.raises(ApiError):
        landing.list()
    landing.list()  # next pass: the pending acks are finished first
    seen: Counter[str] = Counter()
    files = sorted((home / "atterrissage/milo-test/evenements").glob("evenements_*.jsonl"))
    for path in files:
        for line in path.read_text().splitlines():
            seen[json.loads(line)["evenement"]["id"]] += 1
    assert len(seen) == 3 and set(seen.values()) == {1}, f"{len(files)} files: {seen}"
    assert len(set(api.state.acked)) == 3
    assert not (home / "atterrissage/milo-test/evenements/.a-consommer.json").exists()


def test_demandes_landed_before_a_crash_are_deleted_not_landed_again(api: PartnerApi, home: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    landing = transport(home, "france-travail", "usagers")
    demandes = home / "atterrissage/ft-test/usagers/demandes"
    demandes.mkdir(parents=True)
    for number, (nir, birth) in enumerate(PEOPLE):
        (demandes / f"d{number}.jsonl").write_text(json.dumps({"nir": nir, "date_naissance": birth}) + "\n")
    real_delete = LocalFolder.delete
    calls: list[str] = []

    def crash_after_one(self: LocalFolder, name: str, **kw: Any) -> bool:
        if calls:
            raise KeyboardInterrupt  # the worker killed between two deletions
        calls.append(name)
        return real_delete(self, name, **kw)

    monkeypatch.setattr(LocalFolder, "delete", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        landing.list()
    monkeypatch.setattr(LocalFolder, "delete", real_delete)
    assert len(list(demandes.iterdir())) == 2
    landing.list()
    assert list(demandes.iterdir()) == []
    files = list((home / "atterrissage/ft-test/usagers").glob("usagers_*.jsonl"))
    assert len(files) == 1 and len(files[0].read_text().splitlines()) == 3
