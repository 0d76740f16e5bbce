"""The initial inventory: machines, groups, discovered MACs, boot events, audit, tokens, settings.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    state = op.create_table(
        "inventory_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.BigInteger(), nullable=False),
        sa.Column("site_key", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inventory_state")),
    )
    # The site key never leaves the database: per-machine CHAP secrets are derived from it.
    op.bulk_insert(state, [{"id": 1, "serial": 1, "site_key": secrets.token_hex(32)}])

    op.create_table(
        "groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("image", sa.String(63), nullable=True),
        sa.Column("image_version", sa.Integer(), nullable=True),
        sa.Column("disk_mode", sa.String(16), nullable=True),
        sa.Column("boot", _JSON, nullable=True),
        sa.Column("chap_policy", sa.String(16), nullable=True),
        _time("created"),
        _time("updated"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_groups")),
        sa.UniqueConstraint("name", name=op.f("uq_groups_name")),
    )

    op.create_table(
        "machines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("hostname", sa.String(63), nullable=False),
        sa.Column("ip", sa.String(15), nullable=True),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("image", sa.String(63), nullable=True),
        sa.Column("image_version", sa.Integer(), nullable=True),
        sa.Column("disk_mode", sa.String(16), nullable=True),
        sa.Column("boot", _JSON, nullable=True),
        sa.Column("next_boot_once", _JSON, nullable=True),
        sa.Column("initiator_name", sa.String(223), nullable=True),
        sa.Column("chap_secret", sa.String(255), nullable=True),
        sa.Column("notes", sa.Text(), nullable=False),
        _time("last_seen", nullable=True),
        _time("created"),
        _time("updated"),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["groups.id"],
            name=op.f("fk_machines_group_id_groups"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_machines")),
        sa.UniqueConstraint("mac", name=op.f("uq_machines_mac")),
        sa.UniqueConstraint("hostname", name=op.f("uq_machines_hostname")),
        sa.UniqueConstraint("ip", name=op.f("uq_machines_ip")),
        sa.UniqueConstraint("initiator_name", name=op.f("uq_machines_initiator_name")),
    )
    op.create_index(op.f("ix_machines_group_id"), "machines", ["group_id"])

    op.create_table(
        "discovered",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mac", sa.String(17), nullable=False),
        _time("first_seen"),
        _time("last_seen"),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("last_arch", sa.Integer(), nullable=True),
        sa.Column("last_vendor_class", sa.String(255), nullable=True),
        sa.Column("last_ip", sa.String(15), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_discovered")),
        sa.UniqueConstraint("mac", name=op.f("uq_discovered_mac")),
    )
    op.create_index(op.f("ix_discovered_last_seen"), "discovered", ["last_seen"])

    op.create_table(
        "boot_events",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        _time("at"),
        sa.Column("detail", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_boot_events")),
    )
    op.create_index("ix_boot_events_mac_id", "boot_events", ["mac", "id"])
    op.create_index(op.f("ix_boot_events_at"), "boot_events", ["at"])

    op.create_table(
        "audit_log",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        _time("at"),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("before", _JSON, nullable=True),
        sa.Column("after", _JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_at"), "audit_log", ["at"])
    op.create_index(op.f("ix_audit_log_target"), "audit_log", ["target"])

    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("read_only", sa.Boolean(), nullable=False),
        _time("created"),
        _time("last_used", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("name", name=op.f("uq_api_tokens_name")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )

    op.create_table(
        "settings",
        sa.Column("key", sa.String(63), nullable=False),
        sa.Column("value", _JSON, nullable=True),
        _time("updated"),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_settings")),
    )


def downgrade() -> None:
    op.drop_table("settings")
    op.drop_table("api_tokens")
    op.drop_index(op.f("ix_audit_log_target"), table_name="audit_log")
    op.drop_index(op.f("ix_audit_log_at"), table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index(op.f("ix_boot_events_at"), table_name="boot_events")
    op.drop_index("ix_boot_events_mac_id", table_name="boot_events")
    op.drop_table("boot_events")
    op.drop_index(op.f("ix_discovered_last_seen"), table_name="discovered")
    op.drop_table("discovered")
    op.drop_index(op.f("ix_machines_group_id"), table_name="machines")
    op.drop_table("machines")
    op.drop_table("groups")
    op.drop_table("inventory_state")
