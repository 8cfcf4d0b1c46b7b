"""SecuritySettings.from_env: what turns TLS, mutual TLS and the token on, and the sentences that name
the variable to fix when a value cannot be used."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtrl.config import SettingsError
from rtrl.security import DEFAULT_MAX_MESSAGE_BYTES, SecuritySettings

PEM = b"-----BEGIN CERTIFICATE-----\nnot parsed here\n-----END CERTIFICATE-----\n"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    paths = {}
    for name in ("cert", "key", "ca", "client_cert", "client_key"):
        path = tmp_path / f"{name}.pem"
        path.write_bytes(PEM)
        paths[name] = str(path)
    return paths


def test_defaults_are_plaintext_without_token_and_16_mib_messages() -> None:
    settings = SecuritySettings.from_env({})
    assert not settings.tls and not settings.client_auth and settings.token == ""
    assert settings.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES == 16 * 1024 * 1024
    assert settings.server_credentials() is None and settings.channel_credentials() is None
    assert settings.server_interceptors() == []
    assert settings.describe() == f"plaintext, no token, messages up to {DEFAULT_MAX_MESSAGE_BYTES} bytes"


def test_certificate_and_key_turn_tls_on_and_mutual_tls_reuses_them_as_client_certificate(files) -> None:
    env = {"RTRL_TLS_CERT_FILE": files["cert"], "RTRL_TLS_KEY_FILE": files["key"], "RTRL_TLS_CA_FILE": files["ca"]}
    tls = SecuritySettings.from_env(env)
    assert tls.tls and not tls.client_auth and tls.client_cert_chain is None
    mutual = SecuritySettings.from_env({**env, "RTRL_TLS_CLIENT_AUTH": "true"})
    assert mutual.client_auth and mutual.client_cert_chain == PEM and mutual.client_private_key == PEM
    assert mutual.describe().startswith("mutual TLS, no token")


def test_a_missing_certificate_file_names_the_variable(tmp_path: Path, files) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(SettingsError, match=r"RTRL_TLS_CERT_FILE='.*nope\.pem' cannot be read .*readable PEM file"):
        SecuritySettings.from_env({"RTRL_TLS_CERT_FILE": missing, "RTRL_TLS_KEY_FILE": files["key"]})


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    with pytest.raises(SettingsError, match=r"RTRL_TLS_CA_FILE=.* is empty"):
        SecuritySettings.from_env({"RTRL_TLS_CA_FILE": str(empty)})


def test_certificate_without_key_is_refused(files) -> None:
    with pytest.raises(SettingsError, match="RTRL_TLS_CERT_FILE is set but RTRL_TLS_KEY_FILE is not"):
        SecuritySettings.from_env({"RTRL_TLS_CERT_FILE": files["cert"]})
    with pytest.raises(SettingsError, match="RTRL_TLS_KEY_FILE is set but RTRL_TLS_CERT_FILE is not"):
        SecuritySettings.from_env({"RTRL_TLS_KEY_FILE": files["key"]})


def test_mutual_tls_needs_a_ca_and_a_certificate(files) -> None:
    with pytest.raises(SettingsError, match="RTRL_TLS_CLIENT_AUTH=true needs RTRL_TLS_CA_FILE"):
        SecuritySettings.from_env(
            {"RTRL_TLS_CERT_FILE": files["cert"], "RTRL_TLS_KEY_FILE": files["key"], "RTRL_TLS_CLIENT_AUTH": "yes"}
        )
    with pytest.raises(SettingsError, match="needs a certificate to present"):
        SecuritySettings.from_env({"RTRL_TLS_CA_FILE": files["ca"], "RTRL_TLS_CLIENT_AUTH": "true"})
    with pytest.raises(SettingsError, match="RTRL_TLS_CLIENT_AUTH is not true"):
        SecuritySettings.from_env(
            {"RTRL_TLS_CLIENT_CERT_FILE": files["client_cert"], "RTRL_TLS_CLIENT_KEY_FILE": files["client_key"]}
        )


def test_token_must_be_long_printable_and_set_once(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="RTRL_AUTH_TOKEN is 5 characters long; use at least 16"):
        SecuritySettings.from_env({"RTRL_AUTH_TOKEN": "short"})
    with pytest.raises(SettingsError, match="spaces or characters other than printable ASCII"):
        SecuritySettings.from_env({"RTRL_AUTH_TOKEN": "a token with spaces in it"})
    token_file = tmp_path / "token"
    token_file.write_text("0123456789abcdef-from-a-file\n")
    assert SecuritySettings.from_env({"RTRL_AUTH_TOKEN_FILE": str(token_file)}).token == "0123456789abcdef-from-a-file"
    with pytest.raises(SettingsError, match="set only one of them"):
        SecuritySettings.from_env({"RTRL_AUTH_TOKEN": "0123456789abcdef", "RTRL_AUTH_TOKEN_FILE": str(token_file)})
    # The token never shows in the settings' repr (logs print settings objects).
    assert "0123456789abcdef" not in repr(SecuritySettings.from_env({"RTRL_AUTH_TOKEN": "0123456789abcdef"}))


def test_message_limit_has_a_floor(files) -> None:
    assert SecuritySettings.from_env({"RTRL_GRPC_MAX_MESSAGE_BYTES": "65536"}).max_message_bytes == 65536
    with pytest.raises(SettingsError, match="RTRL_GRPC_MAX_MESSAGE_BYTES=100 is too small; set it to 4096 or more"):
        SecuritySettings.from_env({"RTRL_GRPC_MAX_MESSAGE_BYTES": "100"})


def test_server_name_needs_tls() -> None:
    with pytest.raises(SettingsError, match="RTRL_TLS_SERVER_NAME is set but TLS is off"):
        SecuritySettings.from_env({"RTRL_TLS_SERVER_NAME": "rtrl"})
