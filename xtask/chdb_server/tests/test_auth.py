"""Authentication (chdb_server.auth): every credential path ClickHouse accepts, and what it refuses."""

from __future__ import annotations

import base64

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
