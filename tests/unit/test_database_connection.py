"""How a container reaches its database in AWS: the secret's two formats, the endpoint from
the template, TLS verify-full against the bundled CAs, nothing that pins an RDS Proxy
session, and the reader falling back to the writer."""

from __future__ import annotations

import json

import pytest
from cryptography import x509
from psycopg.conninfo import conninfo_to_dict

from frontdesk.config import Settings
from frontdesk.platform.db import (
    RDS_CA_BUNDLE,
    ConnectOptions,
    SecretError,
    connect_kwargs,
    conninfo_from_secret,
)
from frontdesk.services import Services

PROXY = "frontdesk.proxy-abc.us-east-1.rds.amazonaws.com"


def test_an_rds_managed_secret_takes_host_port_and_database_from_the_endpoint() -> None:
    # Given the secret RDS writes when it manages the master password: no host, no port
    secret = json.dumps({"username": "frontdesk", "password": "p@ss word/:"})
    # When it is combined with the proxy's endpoint from the template
    conninfo = conninfo_to_dict(
        conninfo_from_secret(secret, host=PROXY, port=5432, dbname="frontdesk")
    )
    # Then it connects there, the password intact
    assert conninfo == {
        "user": "frontdesk",
        "password": "p@ss word/:",
        "host": PROXY,
        "port": "5432",
        "dbname": "frontdesk",
    }


def test_an_rds_managed_secret_without_an_endpoint_names_the_missing_setting() -> None:
    # Given the {username, password} secret and no DATABASE_HOST
    secret = json.dumps({"username": "frontdesk", "password": "x"})
    # When the conninfo is built / Then the error says what to set (not KeyError: 'host')
    with pytest.raises(SecretError, match="DATABASE_HOST"):
        conninfo_from_secret(secret)


def test_the_endpoint_wins_over_the_host_in_a_url_or_rds_style_secret() -> None:
    url = "postgresql://app:pw@db-instance.internal:5433/frontdesk"
    full = json.dumps(
        {"username": "app", "password": "pw", "host": "db-instance.internal", "port": 5433}
    )
    # When the proxy endpoint is given / Then both point at the proxy, the rest kept
    assert conninfo_to_dict(conninfo_from_secret(url, host=PROXY))["host"] == PROXY
    parsed = conninfo_to_dict(conninfo_from_secret(full, host=PROXY, dbname="frontdesk"))
    assert (parsed["host"], parsed["port"], parsed["dbname"]) == (PROXY, "5433", "frontdesk")
    # And without an endpoint a URL secret is used as it is
    assert conninfo_from_secret(url) == url


def test_aws_connections_verify_the_server_and_never_pin_a_proxy_session() -> None:
    # Given the settings template.yaml gives every function
    settings = Settings(db_sslmode="verify-full", db_startup_options=False)
    # When a connection's arguments are made
    kwargs = connect_kwargs(options=settings.connect_options())
    # Then TLS is verify-full against the bundle in the layer, psycopg prepares nothing on
    # the server, and no startup options are sent (RDS Proxy refuses them)
    assert kwargs["sslmode"] == "verify-full"
    assert kwargs["sslrootcert"] == str(RDS_CA_BUNDLE)
    assert kwargs["prepare_threshold"] is None
    assert "options" not in kwargs


def test_local_connections_keep_their_session_timeouts() -> None:
    kwargs = connect_kwargs(options=ConnectOptions(statement_timeout_ms=1234))
    assert "statement_timeout=1234" in kwargs["options"]
    assert "idle_in_transaction_session_timeout=2468" in kwargs["options"]
    assert kwargs["prepare_threshold"] is None
    assert "sslrootcert" not in kwargs


def test_the_bundle_holds_the_rds_authorities_and_the_roots_of_rds_proxy() -> None:
    # Given the PEM file shipped in the layer
    certificates = x509.load_pem_x509_certificates(RDS_CA_BUNDLE.read_bytes())
    names = {c.subject.rfc4514_string() for c in certificates}
    # Then it has every region's RDS roots (three key types) and Amazon's roots (ACM)
    assert any("CN=Amazon RDS us-east-1 Root CA RSA2048 G1" in n for n in names)
    assert any("CN=Amazon RDS eu-west-1 Root CA ECC384 G1" in n for n in names)
    assert any("CN=Amazon RDS ap-southeast-2 Root CA RSA4096 G1" in n for n in names)
    assert "CN=Amazon Root CA 1,O=Amazon,C=US" in names
    assert len(certificates) > 60
    assert all(
        c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca for c in certificates
    )


def test_the_reader_is_the_writer_unless_a_replica_is_configured() -> None:
    # Given a container without a replica, and one with the proxy's read-only endpoint
    plain = Services(Settings(database_url="postgresql://localhost/x"))  # type: ignore[arg-type]
    replica = Services(
        Settings(database_secret_arn="arn:secret", database_reader_host="reader.proxy")
    )
    # Then reads go to the writer in the first, to a connection of their own in the second
    assert plain.reader is plain.database
    assert replica.reader is not replica.database
    assert replica.reader is replica.reader
