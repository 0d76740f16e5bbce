"""API tokens: random, stored only as a hash, shown once, verified and revoked."""

from __future__ import annotations

import hashlib

import pytest
from inventory_support import Clock
from sqlalchemy import select

from diskless.inventory import (
    InvalidFieldError,
    Inventory,
    InventoryConflictError,
    InventoryNotFoundError,
)
from diskless.inventory.model import TokenRow


def test_create_verify_revoke(inventory: Inventory) -> None:
    created = inventory.create_token("ops", actor="cli")

    assert created.token.startswith("dl_")
    assert len(created.token) > 40
    info = inventory.verify_token(created.token)
    assert info is not None
    assert (info.name, info.read_only) == ("ops", False)
    assert inventory.verify_token(created.token + "x") is None
    assert inventory.verify_token("Bearer nonsense") is None

    inventory.revoke_token("ops", actor="cli")

    assert inventory.verify_token(created.token) is None
    with pytest.raises(InventoryNotFoundError):
        inventory.revoke_token("ops", actor="cli")
    assert [entry.action for entry in inventory.audit_log()] == ["token.revoke", "token.create"]


def test_only_the_hash_is_stored(inventory: Inventory) -> None:
    created = inventory.create_token("viewer", read_only=True, actor="cli")

    with inventory.database.read() as session:
        row = session.scalars(select(TokenRow)).one()
        stored = [str(value) for value in vars(row).values()]

    assert row.token_hash == hashlib.sha256(created.token.encode()).hexdigest()
    assert not any(created.token in value for value in stored)
    assert created.token not in repr(inventory.list_tokens())
    assert created.token not in repr(inventory.audit_log())
    assert inventory.list_tokens()[0].read_only is True


def test_tokens_are_unique_and_named_sensibly(inventory: Inventory) -> None:
    first = inventory.create_token("ops", actor="cli")

    with pytest.raises(InventoryConflictError) as caught:
        inventory.create_token("ops", actor="cli")
    assert caught.value.field == "name"
    with pytest.raises(InvalidFieldError) as bad:
        inventory.create_token("has space", actor="cli")
    assert bad.value.field == "name"
    second = inventory.create_token("ops2", actor="cli")
    assert first.token != second.token


def test_last_used_is_written_at_most_once_a_minute(inventory: Inventory, clock: Clock) -> None:
    created = inventory.create_token("ops", actor="cli")

    first = inventory.verify_token(created.token)
    clock.advance(30)
    inventory.verify_token(created.token)
    after_30s = inventory.list_tokens()[0].last_used
    clock.advance(31)
    inventory.verify_token(created.token)
    after_61s = inventory.list_tokens()[0].last_used

    assert first is not None
    assert first.last_used is not None
    assert after_30s == first.last_used
    assert after_61s is not None
    assert after_61s.timestamp() == pytest.approx(first.last_used.timestamp() + 61)
