"""Partner connections come from one lookup chain and never show their secrets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from connectors.connections import PartnerConnection, env_name, get_connection
from spie_hub.core.errors import ConfigurationError
from spie_hub.core.home import HubHome


def test_the_environment_variable_is_named_as_airflow_names_it() -> None:
    assert env_name("sftp-caf.052") == "AIRFLOW_CONN_SFTP_CAF_052"


def test_a_json_connection_from_the_environment_is_read_with_its_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FT_API", json.dumps({
        "conn_type": "https", "host": "api.example.fr", "port": 8443, "login": "client", "password": "s3cr3t-value",
        "extra": {"token_url": "https://auth.example.fr/token", "ca_file": "/etc/ca.pem"}}))
    connection = get_connection("ft-api")
    assert (connection.host, connection.port, connection.login, connection.password) == ("api.example.fr", 8443, "client", "s3cr3t-value")
    assert connection.required("token_url") == "https://auth.example.fr/token"
    assert "s3cr3t-value" not in repr(connection) and "/etc/ca.pem" not in str(connection)


def test_a_uri_connection_is_percent_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SFTP_CAF", "sftp://caf%2Bmsa:p%40ss@127.0.0.1:2222/depot?host_key=ssh-ed25519+AAAA")
    connection = get_connection("sftp-caf")
    assert (connection.conn_type, connection.login, connection.password, connection.port, connection.schema) == (
        "sftp", "caf+msa", "p@ss", 2222, "depot")
    assert connection.setting("host_key") == "ssh-ed25519 AAAA"


def test_a_missing_connection_names_the_variable_and_the_file_to_set(hub_home: Path) -> None:
    with pytest.raises(ConfigurationError) as error:
        get_connection("api-milo")
    assert "AIRFLOW_CONN_API_MILO" in str(error.value) and "connexions/api-milo.json" in str(error.value)


def test_a_missing_required_extra_names_the_key_never_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_X", json.dumps({"conn_type": "sftp", "password": "hunter2"}))
    with pytest.raises(ConfigurationError) as error:
        get_connection("x").required("host_key")
    assert "host_key" in str(error.value) and "hunter2" not in str(error.value)


def test_a_connection_file_readable_by_others_is_refused(hub_home: Path) -> None:
    home = HubHome.from_env().ensure()
    folder = home.root / "connexions"
    folder.mkdir(exist_ok=True)
    path = folder / "sftp-ml.json"
    path.write_text(json.dumps({"conn_type": "sftp", "host": "127.0.0.1", "password": "pw"}), encoding="utf-8")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        get_connection("sftp-ml")
    os.chmod(path, 0o600)
    assert isinstance(get_connection("sftp-ml"), PartnerConnection)


def test_a_linked_connection_file_is_refused(hub_home: Path, tmp_path: Path) -> None:
    home = HubHome.from_env().ensure()
    (home.root / "connexions").mkdir(exist_ok=True)
    target = tmp_path / "ailleurs.json"
    target.write_text("{}", encoding="utf-8")
    (home.root / "connexions" / "lien.json").symlink_to(target)
    with pytest.raises(ConfigurationError, match="lien refusé"):
        get_connection("lien")


@pytest.mark.parametrize("text", ["{", "[]", '{"conn_type": 3}', '{"conn_type": "sftp", "port": "x"}',
                                  '{"conn_type": "sftp", "extra": "[1]"}', '{"conn_type": "sftp", "login": 5}'])
def test_a_malformed_connection_is_a_french_error(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_BAD", text)
    with pytest.raises(ConfigurationError, match="Connexion bad"):
        get_connection("bad")


def test_an_identifier_that_could_be_a_path_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        get_connection("../../etc/passwd")
