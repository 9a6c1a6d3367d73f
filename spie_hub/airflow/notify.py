"""Failure alerts of the hub's DAGs: a notifier, set as every task's ``on_failure_callback``, that mails or posts a
short French message to the operators through one Airflow Connection.

The Connection is named by ``SPIE_HUB_ALERT_CONN_ID`` (default ``spie_hub_alertes``), read when a task fails:

- conn type ``smtp``: host, port (465 means implicit TLS), login/password optional, extra
  ``{"from": "hub@…", "to": ["astreinte@…"], "starttls": true, "ssl": false}``;
- conn type ``http``/``https``: host, schema (``http``/``https``), port, extra ``{"endpoint": "/hooks/…"}``; a JSON
  POST (``text`` holds the whole message, as Slack/Mattermost/Teams webhooks expect, the other keys its parts);
  login + password give basic authentication, a password alone a bearer token.

No such Connection: one warning per process, and nothing else (the DAG runs as before). A failed send is logged
(error class and server only) and never fails anything.

The message names the DAG, the task, the input's opaque reference (the mapped task's label), the attempt and the
error class and message. Never a partner's file name, a person's data or a secret: only the hub's own error
messages (written without identifiers) and Airflow's are quoted, anything else is named by its class alone.
"""

from __future__ import annotations

import json
import logging
import os
import re
import smtplib
import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any

from airflow.sdk import BaseNotifier
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowTaskTimeout

from spie_hub.core.errors import HubError

ENV_CONN_ID = "SPIE_HUB_ALERT_CONN_ID"
DEFAULT_CONN_ID = "spie_hub_alertes"
#: Seconds allowed to the mail server or the webhook (a slow alert must not hold a worker).
SEND_TIMEOUT = 15.0
MAX_MESSAGE = 800

log = logging.getLogger("spie_hub.airflow.notify")
_warned_missing: set[str] = set()

#: Defence in depth: a run of 10+ digits or a NIR shape (2A/2B included) standing alone in a quoted message.
_IDENTIFIER = re.compile(r"(?<![0-9A-Za-z])(?:\d{10,}|[12378]\d{4}2[AB]\d{6}(?:\d{2})?)(?![0-9A-Za-z])")


class UpstreamFailures(AirflowFailException):
    """Raised by a closing task to fail the DAG run for failures already alerted on (not alerted again)."""


def alert_conn_id() -> str:
    return os.environ.get(ENV_CONN_ID) or DEFAULT_CONN_ID


def _root(error: BaseException) -> BaseException:
    """The hub error an ``AirflowFailException`` was raised from, or the error itself."""
    cause = error.__cause__
    return cause if isinstance(error, AirflowFailException) and cause is not None else error


def error_class(error: BaseException | None) -> str:
    if error is None:
        return "inconnue"
    root = _root(error)
    return type(error).__name__ if root is error else f"{type(root).__name__} ({type(error).__name__})"


def error_text(error: BaseException | None) -> str:
    """The error's message when it is the hub's or Airflow's own (written without identifiers), else nothing."""
    if error is None:
        return "(aucune exception transmise : tâche arrêtée de l'extérieur ?)"
    if isinstance(error, (HubError, AirflowException, AirflowTaskTimeout)):
        text = " ".join(str(error).split())
    else:
        text = "(message non transmis : erreur inattendue, voir le journal de la tâche)"
    text = _IDENTIFIER.sub("[masqué]", text)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def describe(context: Mapping[str, Any]) -> dict[str, Any]:
    """The alert's parts, from a task's failure context."""
    ti = context.get("ti") or context.get("task_instance")
    error = context.get("exception")
    map_index = getattr(ti, "map_index", -1)
    label = getattr(ti, "rendered_map_index", None) or (str(map_index) if map_index is not None and map_index >= 0 else None)
    try_number = getattr(ti, "try_number", None)
    max_tries = getattr(ti, "max_tries", None)
    return {
        "dag": getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?"),
        "tache": getattr(ti, "task_id", "?"),
        "reference": label,
        "execution": getattr(ti, "run_id", None) or context.get("run_id"),
        "tentative": try_number,
        "tentatives_max": max_tries + 1 if isinstance(max_tries, int) and max_tries >= 0 else None,
        "erreur": error_class(error),
        "message": error_text(error),
    }


def render(parts: Mapping[str, Any]) -> tuple[str, str]:
    """(subject, body) in French."""
    where = f"{parts['dag']}.{parts['tache']}" + (f" [{parts['reference']}]" if parts["reference"] else "")
    subject = f"[Hub SPIE] Échec de {where}"
    attempt = parts["tentative"] if parts["tentative"] is not None else "?"
    if parts["tentatives_max"]:
        attempt = f"{attempt} sur {parts['tentatives_max']}"
    lines = [
        "Une tâche du hub SPIE a échoué.",
        "",
        f"DAG : {parts['dag']}",
        f"Tâche : {parts['tache']}",
        f"Fichier (référence opaque) : {parts['reference'] or 'sans objet'}",
        f"Exécution Airflow : {parts['execution'] or '?'}",
        f"Tentative : {attempt}",
        f"Erreur : {parts['erreur']}",
        f"Message : {parts['message']}",
        "",
        "Le détail est dans le journal de la tâche (interface Airflow). Ce message ne contient ni nom de fichier "
        "ni donnée personnelle.",
    ]
    return subject, "\n".join(lines)


def _recipients(value: Any) -> list[str]:
    if isinstance(value, str):
        return [a.strip() for a in value.replace(";", ",").split(",") if a.strip()]
    return [str(a).strip() for a in value or () if str(a).strip()]


def _flag(extra: Mapping[str, Any], key: str, default: bool) -> bool:
    value = extra.get(key, default)
    return value.strip().lower() in ("1", "true", "oui", "yes") if isinstance(value, str) else bool(value)


def send_mail(connection: Any, subject: str, body: str) -> None:
    extra = connection.extra_dejson
    to = _recipients(extra.get("to"))
    sender = extra.get("from") or (f"{connection.login}" if connection.login and "@" in connection.login else None)
    if not to or not sender:
        raise ValueError("connexion SMTP sans 'from' ou sans 'to' dans extra")
    port = int(connection.port or 25)
    message = EmailMessage()
    message["Subject"], message["From"], message["To"] = subject, sender, ", ".join(to)
    message.set_content(body)
    context = ssl.create_default_context()
    if _flag(extra, "ssl", port == 465):
        client: smtplib.SMTP = smtplib.SMTP_SSL(connection.host, port, timeout=SEND_TIMEOUT, context=context)
    else:
        client = smtplib.SMTP(connection.host, port, timeout=SEND_TIMEOUT)
    with client:
        if _flag(extra, "starttls", False):
            client.starttls(context=context)
        if connection.login and connection.password:
            client.login(connection.login, connection.password)
        client.send_message(message)


def webhook_url(connection: Any) -> str:
    extra = connection.extra_dejson
    host = (connection.host or "").rstrip("/")
    if "://" not in host:
        scheme = connection.schema or ("https" if connection.conn_type == "https" else "http")
        host = f"{scheme}://{host}" + (f":{connection.port}" if connection.port else "")
    endpoint = str(extra.get("endpoint") or "")
    return host + (endpoint if not endpoint or endpoint.startswith("/") else "/" + endpoint)


def post_webhook(connection: Any, payload: Mapping[str, Any]) -> None:
    import requests

    headers = {"Content-Type": "application/json; charset=utf-8"}
    auth = None
    if connection.login and connection.password:
        auth = (connection.login, connection.password)
    elif connection.password:
        headers["Authorization"] = f"Bearer {connection.password}"
    response = requests.post(webhook_url(connection), data=json.dumps(payload, ensure_ascii=False).encode("utf-8"),
                             headers=headers, auth=auth, timeout=SEND_TIMEOUT)
    response.raise_for_status()


def _connection(conn_id: str) -> Any | None:
    from airflow.sdk import Connection

    try:
        return Connection.get(conn_id)
    except Exception:  # noqa: BLE001 - not defined, or no backend reachable: alerts are off, the DAG is not
        if conn_id not in _warned_missing:
            _warned_missing.add(conn_id)
            log.warning("Alertes d'échec désactivées : la connexion Airflow %r n'existe pas (%s).", conn_id, ENV_CONN_ID)
        return None


class HubFailureNotifier(BaseNotifier):
    """``on_failure_callback`` of the hub's tasks: one mail or one webhook POST per failed task instance."""

    def __init__(self, conn_id: str | None = None) -> None:
        super().__init__()
        self.conn_id = conn_id  # None: SPIE_HUB_ALERT_CONN_ID when the task fails

    def notify(self, context: Any) -> None:
        if isinstance(context.get("exception"), UpstreamFailures):
            return  # each failure it sums up was alerted on by its own task
        conn_id = self.conn_id or alert_conn_id()
        connection = _connection(conn_id)
        if connection is None:
            return
        parts = describe(context)
        subject, body = render(parts)
        kind = (connection.conn_type or "").lower()
        try:
            if kind in ("smtp", "email"):
                send_mail(connection, subject, body)
            elif kind in ("http", "https"):
                post_webhook(connection, {"text": f"{subject}\n\n{body}", "titre": subject, **parts})
            else:
                log.warning("Alerte non envoyée : type de connexion %r non pris en charge (smtp ou http).", kind)
                return
        except Exception as error:  # noqa: BLE001 - an alert that cannot go out must not hide the task's own error
            # The class only: a transport error's text may quote the webhook URL (a secret token in some services).
            log.error("Alerte d'échec non envoyée par la connexion %r (%s) : %s", conn_id, kind, type(error).__name__)
            return
        log.info("Alerte d'échec envoyée par la connexion %r (%s).", conn_id, kind)
