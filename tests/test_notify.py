"""Failure alerts: the notifier mails through a real local SMTP server and posts to a real local HTTP server, with
no secret and no file name in what it sends; without its Connection it warns once and does nothing."""

from __future__ import annotations

import json
import logging
import socket
import threading
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest

pytestmark = pytest.mark.airflow

PARTNER_FILE = "NRSACGIM_RSABEM_20260301.xml"
REF = "3f9a0c1d2e4b5a67"
PASSWORD = "mot-de-passe-tres-secret"
TOKEN = "jeton-webhook-secret"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MailSink:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 keeping what it receives; with ``login``, AUTH is required."""

    def __init__(self, login: str | None = None, password: str | None = None) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        self.messages: list[Message] = []
        self.logins: list[tuple[str, str]] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                sink.messages.append(message_from_bytes(envelope.original_content or envelope.content))
                return "250 Message accepted for delivery"

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
            user, secret = auth_data.login.decode(), auth_data.password.decode()
            sink.logins.append((user, secret))
            return AuthResult(success=(user, secret) == (login, password))

        self.port = _free_port()
        options: dict[str, Any] = {}
        if login is not None:
            options = {"authenticator": authenticator, "auth_required": True, "auth_require_tls": False}
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **options)

    def connection(self, **extra: Any) -> dict[str, Any]:
        return {"conn_type": "smtp", "host": "127.0.0.1", "port": self.port,
                "extra": {"from": "hub-spie@example.fr", "to": ["astreinte@example.fr", "dsi@example.fr"], **extra}}

    def __enter__(self) -> MailSink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


class WebhookSink:
    """A real HTTP server (stdlib, in a thread) keeping every POST: path, headers, JSON body."""

    def __init__(self, status: int = 204) -> None:
        self.posts: list[dict[str, Any]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.posts.append({"path": self.path, "headers": dict(self.headers), "raw": body,
                                   "json": json.loads(body)})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def connection(self, **fields: Any) -> dict[str, Any]:
        return {"conn_type": "http", "host": "127.0.0.1", "port": self.port, "schema": "http",
                "extra": {"endpoint": "/alertes/spie"}, **fields}

    def __enter__(self) -> WebhookSink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def use_alert_connection(monkeypatch: pytest.MonkeyPatch, connection: dict[str, Any], conn_id: str = "spie_hub_alertes") -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))


def _failure_context(error: BaseException) -> dict[str, Any]:
    ti = SimpleNamespace(dag_id="spie_caf_vers_departement", task_id="executer_flux", map_index=0,
                         rendered_map_index=REF, try_number=1, max_tries=2, run_id="manual__2026-03-01T06:00:00+00:00")
    return {"ti": ti, "exception": error, "run_id": ti.run_id}


def _quarantine_error() -> BaseException:
    from airflow.sdk.exceptions import AirflowFailException

    from spie_hub.core.errors import FatalInputError

    cause = FatalInputError("Fichier tronqué : l'élément racine <Racine> n'est jamais fermé")
    try:
        raise AirflowFailException(f"Flux caf-vers-departement, fichier {REF} : mis en quarantaine ; motif : {cause}") from cause
    except AirflowFailException as error:
        return error


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    from spie_hub.airflow import notify

    monkeypatch.setattr(notify, "_warned_missing", set())
    monkeypatch.delenv("SPIE_HUB_ALERT_CONN_ID", raising=False)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # a local test server, no TLS
def test_the_notifier_mails_the_failure_through_a_real_smtp_server_without_secret_or_file_name(monkeypatch) -> None:
    from spie_hub.airflow.notify import HubFailureNotifier

    with MailSink(login="hub-alertes", password=PASSWORD) as sink:
        use_alert_connection(monkeypatch, sink.connection() | {"login": "hub-alertes", "password": PASSWORD})
        HubFailureNotifier()(_failure_context(_quarantine_error()))

    assert sink.logins == [("hub-alertes", PASSWORD)]  # it did log in with the Connection's credentials
    assert len(sink.messages) == 1
    mail = sink.messages[0]
    body = mail.get_payload(decode=True).decode("utf-8")
    assert mail["To"] == "astreinte@example.fr, dsi@example.fr" and mail["From"] == "hub-spie@example.fr"
    assert "spie_caf_vers_departement" in mail["Subject"] and REF in mail["Subject"]
    for expected in ("DAG : spie_caf_vers_departement", "Tâche : executer_flux", f"Fichier (référence opaque) : {REF}",
                     "Tentative : 1 sur 3", "Erreur : FatalInputError (AirflowFailException)", "mis en quarantaine"):
        assert expected in body
    whole = mail.as_string()
    assert PASSWORD not in whole and PARTNER_FILE not in whole and "RSABEM" not in whole


def test_the_notifier_posts_json_to_a_real_webhook_without_secret_or_file_name(monkeypatch) -> None:
    from spie_hub.airflow.notify import HubFailureNotifier

    with WebhookSink() as sink:
        use_alert_connection(monkeypatch, sink.connection(password=TOKEN), conn_id="alertes_astreinte")
        monkeypatch.setenv("SPIE_HUB_ALERT_CONN_ID", "alertes_astreinte")
        HubFailureNotifier()(_failure_context(_quarantine_error()))

    assert len(sink.posts) == 1
    post = sink.posts[0]
    assert post["path"] == "/alertes/spie"
    assert post["headers"]["Authorization"] == f"Bearer {TOKEN}"  # the token travels as a header, not in the body
    payload = post["json"]
    assert payload["dag"] == "spie_caf_vers_departement" and payload["tache"] == "executer_flux"
    assert payload["reference"] == REF and payload["tentative"] == 1
    assert payload["erreur"] == "FatalInputError (AirflowFailException)" and "quarantaine" in payload["message"]
    assert "executer_flux" in payload["text"] and REF in payload["text"]
    assert TOKEN.encode() not in post["raw"] and PARTNER_FILE.encode() not in post["raw"]


def test_an_unexpected_errors_text_is_not_sent_only_its_class(monkeypatch) -> None:
    from spie_hub.airflow.notify import HubFailureNotifier

    leaky = FileNotFoundError(2, "No such file or directory", f"/srv/hub/inbox/caf-msa/{PARTNER_FILE}")
    with WebhookSink() as sink:
        use_alert_connection(monkeypatch, sink.connection())
        HubFailureNotifier()(_failure_context(leaky))

    payload = sink.posts[0]["json"]
    assert payload["erreur"] == "FileNotFoundError"
    assert PARTNER_FILE.encode() not in sink.posts[0]["raw"]


def test_a_nir_slipping_into_a_hub_message_is_masked() -> None:
    from spie_hub.airflow.notify import error_text
    from spie_hub.core.errors import FatalInputError

    text = error_text(FatalInputError(f"valeur 185057800608412 refusée (fichier {REF})"))
    assert "185057800608412" not in text and "[masqué]" in text and REF in text


def test_an_unknown_alert_connection_warns_once_and_sends_nothing(monkeypatch, caplog) -> None:
    from spie_hub.airflow.notify import HubFailureNotifier

    monkeypatch.setenv("SPIE_HUB_ALERT_CONN_ID", "connexion_inexistante")
    monkeypatch.delenv("AIRFLOW_CONN_CONNEXION_INEXISTANTE", raising=False)
    notifier = HubFailureNotifier()
    with caplog.at_level(logging.WARNING, logger="spie_hub.airflow.notify"):
        notifier(_failure_context(_quarantine_error()))
        notifier(_failure_context(_quarantine_error()))
    warnings = [r for r in caplog.records if r.name == "spie_hub.airflow.notify" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "connexion_inexistante" in warnings[0].getMessage()


def test_an_unreachable_alert_server_is_logged_without_its_address_secret_and_never_raises(monkeypatch, caplog) -> None:
    from spie_hub.airflow.notify import HubFailureNotifier

    use_alert_connection(monkeypatch, {"conn_type": "http", "host": "127.0.0.1", "port": _free_port(),
                                       "extra": {"endpoint": f"/hooks/{TOKEN}"}})
    with caplog.at_level(logging.INFO, logger="spie_hub.airflow.notify"):
        HubFailureNotifier()(_failure_context(_quarantine_error()))
    assert any("non envoyée" in r.getMessage() for r in caplog.records)
    assert TOKEN not in caplog.text


def test_the_closing_tasks_summary_of_failures_already_alerted_on_is_not_alerted_again(monkeypatch) -> None:
    from spie_hub.airflow.notify import HubFailureNotifier, UpstreamFailures

    with WebhookSink() as sink:
        use_alert_connection(monkeypatch, sink.connection())
        HubFailureNotifier()(_failure_context(UpstreamFailures("1 tâche(s) en échec (déjà signalées)")))
    assert sink.posts == []
