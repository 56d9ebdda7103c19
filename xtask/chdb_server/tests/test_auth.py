"""Authentication (chdb_server.auth): every credential path ClickHouse accepts, and what it refuses."""

from __future__ import annotations

import base64

import pytest
from chdb_server.auth import Credentials
from chdb_server.errors import ClickHouseError, Code
from harness import PASSWORD


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_authentication(ch):
    def status(**kwargs) -> tuple[int, int | None]:
        reply = ch.request(body="SELECT 1", auth=False, **kwargs)
        return reply.status, reply.code

    assert status(headers={"X-ClickHouse-User": "default", "X-ClickHouse-Key": PASSWORD}) == (200, None)
    assert status(headers=basic("default", PASSWORD)) == (200, None)
    assert status(params={"user": "default", "password": PASSWORD}) == (200, None)

    denied = (403, 516)
    assert status() == denied
    assert status(headers={"X-ClickHouse-User": "default", "X-ClickHouse-Key": "wrong"}) == denied
    assert status(headers=basic("default", "wrong")) == denied
    assert status(params={"user": "default", "password": "wrong"}) == denied
    assert status(params={"user": "nobody", "password": PASSWORD}) == denied
    mixed = {"headers": {"X-ClickHouse-User": "default", "X-ClickHouse-Key": PASSWORD}, "params": {"user": "default"}}
    assert status(**mixed) == denied

    reply = ch.request(body="SELECT 1", params={"user": "nobody", "password": "x"}, auth=False)
    assert reply.text.startswith(
        "Code: 516. DB::Exception: nobody: Authentication failed: password is incorrect, "
        "or there is no user with such name. (AUTHENTICATION_FAILED) (version "
    )
    assert PASSWORD not in reply.text


@pytest.mark.parametrize(
    ("headers", "params", "message"),
    [
        ({"Authorization": "Bearer abc"}, {}, "'Bearer' HTTP Authorization scheme is not supported"),
        ({"Authorization": "Basic not*base64"}, {}, "malformed Basic credentials"),
        (basic("default", PASSWORD), {"password": PASSWORD}, "Authorization HTTP header and authentication via"),
        (
            {"X-ClickHouse-Key": PASSWORD} | basic("default", PASSWORD),
            {},
            "X-ClickHouse HTTP headers and Authorization HTTP header",
        ),
        (basic("", PASSWORD), {}, "empty user name from Authorization HTTP header"),
        ({"X-ClickHouse-User": "default", "X-ClickHouse-Key": PASSWORD[:-1]}, {}, "password is incorrect"),
    ],
)
def test_credentials_refused(headers, params, message):
    with pytest.raises(ClickHouseError) as raised:
        Credentials("default", PASSWORD).authenticate(headers, params)
    assert raised.value.code == Code.AUTHENTICATION_FAILED
    assert message in raised.value.message and PASSWORD not in raised.value.message
    assert PASSWORD not in repr(Credentials("default", PASSWORD))


def test_credentials_accepted():
    credentials = Credentials("default", PASSWORD)
    credentials.authenticate(basic("default", PASSWORD), {})  # the password holds a colon
    credentials.authenticate({}, {"user": "default", "password": PASSWORD})
    Credentials("default", "").authenticate({}, {})  # no credentials: user default, empty password
