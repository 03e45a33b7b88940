"""Prints an HS256 session JWT that the broker under test accepts.

    python mint_session_jwt.py SECRET_FILE ISSUER AUDIENCE

The secret file is read the way the broker reads it (surrounding whitespace
trimmed). Claims: iss, aud, sub, email, name, iat, exp (one hour).
"""

import sys
import time

import jwt


def main() -> None:
    secret_file, issuer, audience = sys.argv[1:4]
    with open(secret_file, encoding="utf-8") as f:
        secret = f.read().strip()
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": "fuzz-user-1",
        "email": "fuzz-user-1@example.com",
        "name": "Fuzz User",
        "iat": now,
        "exp": now + 3600,
    }
    print(jwt.encode(claims, secret, algorithm="HS256"))


if __name__ == "__main__":
    main()
