"""Authentication: one user, with credentials taken the way ClickHouse takes them.

X-ClickHouse-User/X-ClickHouse-Key headers, else Basic auth, else the
`user`/`password` URL parameters; mixing them is an error. Every failure is
AUTHENTICATION_FAILED (HTTP 403) and never carries the password.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass, field

from .errors import ClickHouseError, Code


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)

    def authenticate(self, headers, params: dict[str, str]) -> None:
        """Check a request's credentials the way ClickHouse does
        (src/Server/HTTP/authenticateUserByHTTP.cpp): X-ClickHouse headers, else
        Basic auth, else URL parameters; mixing them is an error."""
        header_user = headers.get("X-ClickHouse-User", "")
        header_key = headers.get("X-ClickHouse-Key", "")
        authorization = headers.get("Authorization")
        in_params = "user" in params or "password" in params
        if header_user or header_key:
            if authorization:
                _mixed("X-ClickHouse HTTP headers", "Authorization HTTP header")
            if in_params:
                _mixed("X-ClickHouse HTTP headers", "authentication via parameters")
            user, password, source = header_user, header_key, "X-ClickHouse HTTP headers"
        elif authorization:
            if in_params:
                _mixed("Authorization HTTP header", "authentication via parameters")
            user, password = _basic_credentials(authorization)
            source = "Authorization HTTP header"
        else:
            user, password = params.get("user", "default"), params.get("password", "")
            source = "authentication via parameters"
        if not user:
            raise ClickHouseError(Code.AUTHENTICATION_FAILED, f"Got an empty user name from {source}.")
        # Compare both, always, so the time taken does not tell which was wrong.
        user_ok = hmac.compare_digest(user.encode(), self.user.encode())
        password_ok = hmac.compare_digest(password.encode(), self.password.encode())
        if not (user_ok and password_ok):
            raise ClickHouseError(
                Code.AUTHENTICATION_FAILED,
                f"{user}: Authentication failed: password is incorrect, or there is no user with such name.",
            )


def _mixed(first: str, second: str):
    raise ClickHouseError(
        Code.AUTHENTICATION_FAILED,
        f"Invalid authentication: it is not allowed to use {first} and {second} simultaneously.",
    )


def _basic_credentials(authorization: str) -> tuple[str, str]:
    scheme, _, info = authorization.partition(" ")
    if scheme.lower() != "basic":
        raise ClickHouseError(
            Code.AUTHENTICATION_FAILED,
            f"Invalid authentication: '{scheme}' HTTP Authorization scheme is not supported.",
        )
    try:
        decoded = base64.b64decode(info.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ClickHouseError(
            Code.AUTHENTICATION_FAILED, "Invalid authentication: malformed Basic credentials."
        ) from None
    user, _, password = decoded.partition(":")
    return user, password
