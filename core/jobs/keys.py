"""API keys: create, verify, list and revoke; and the ``clipadapt keys`` commands.

A key reads ``ca_<id>_<secret>``: the id finds the row, the secret is checked against a SHA-256 hash
(keys are 256-bit random strings, so a fast hash is enough; nothing reversible is stored). The key
itself is shown once, when it is created. A key's ``owner`` owns every dataset, job and model made
with any key of that owner.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Sequence
from typing import Annotated

import typer
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.jobs.models import ApiKey, utcnow

PREFIX = "ca"
_KEY = re.compile(rf"^{PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{43}})$")
OWNER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,254}$"


class ApiKeyError(ValueError):
    """A key operation the caller asked for cannot be done (unknown id, bad owner name)."""


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiKeyRepository:
    """Queries and writes for API keys; like every repository it never commits."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def create(self, owner: str) -> tuple[ApiKey, str]:
        """A new key for ``owner``; returns the row and the key (the only time it is known)."""
        if not re.match(OWNER_PATTERN, owner):
            raise ApiKeyError(f"invalid owner {owner!r}: letters, digits and . _ @ - (at most 255)")
        key_id = secrets.token_hex(6)
        token = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        row = ApiKey(id=key_id, owner=owner, secret_hash=_hash(token))
        self.session.add(row)
        self.session.flush()
        return row, token

    def owner_of(self, token: str) -> str | None:
        """The owner of an active key, or None for anything else (unknown, revoked, malformed)."""
        match = _KEY.match(token)
        if match is None:
            return None
        row = self.session.get(ApiKey, match.group(1))
        if row is None or row.revoked_at is not None:
            return None
        return row.owner if hmac.compare_digest(row.secret_hash, _hash(token)) else None

    def revoke(self, key_id: str) -> ApiKey:
        row = self.session.get(ApiKey, key_id)
        if row is None:
            raise ApiKeyError(f"no API key with id {key_id!r}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        return row

    def list(self, *, owner: str | None = None, include_revoked: bool = False) -> Sequence[ApiKey]:
        stmt = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if owner is not None:
            stmt = stmt.where(ApiKey.owner == owner)
        if not include_revoked:
            stmt = stmt.where(ApiKey.revoked_at.is_(None))
        return self.session.scalars(stmt).all()


# ----------------------------------------------------------------------------- command line

app = typer.Typer(help="Create, list and revoke API keys (the database comes from CLIPADAPT_* settings).",
                  no_args_is_help=True)


def _db_url() -> str:
    from core.settings import get_settings

    return get_settings().resolved_database_url


def _describe(row: ApiKey) -> dict:
    return {"id": row.id, "owner": row.owner, "created_at": row.created_at.isoformat(),
            "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None}


@app.command("create")
def create_command(
    owner: Annotated[str, typer.Option("--owner", help="Who the key's datasets, jobs and models belong to.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a key for OWNER and print it; it is shown only this once."""
    from core.jobs.db import transaction

    try:
        with transaction(_db_url()) as session:
            row, token = ApiKeyRepository(session).create(owner)
            info = _describe(row)
    except ApiKeyError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    if as_json:
        typer.echo(json.dumps(info | {"key": token}))
    else:
        typer.echo(f"key {info['id']} for {owner} (shown once; store it now):\n{token}")


@app.command("revoke")
def revoke_command(key_id: Annotated[str, typer.Argument(help="The key's id (from `keys list`).")]) -> None:
    """Revoke a key: requests with it are refused from now on."""
    from core.jobs.db import transaction

    try:
        with transaction(_db_url()) as session:
            ApiKeyRepository(session).revoke(key_id)
    except ApiKeyError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"revoked {key_id}")


@app.command("list")
def list_command(
    owner: Annotated[str | None, typer.Option("--owner", help="Only this owner's keys.")] = None,
    include_revoked: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List keys (ids and owners; the keys themselves are not stored)."""
    from core.jobs.db import transaction

    with transaction(_db_url()) as session:
        rows = [_describe(r) for r in ApiKeyRepository(session).list(owner=owner, include_revoked=include_revoked)]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        typer.echo(f"{r['id']}  {r['owner']:<24} created {r['created_at']}"
                   + (f"  revoked {r['revoked_at']}" if r["revoked_at"] else ""))
