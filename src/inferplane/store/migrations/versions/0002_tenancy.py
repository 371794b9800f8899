"""tenancy: orgs, teams, and keys with team, role, models, limits, expiry, rotation

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orgs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "teams",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("limits", sa.JSON, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("org_id", "name"),
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="user"))
        batch.add_column(sa.Column("team_id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("models", sa.JSON, nullable=True))
        batch.add_column(sa.Column("limits", sa.JSON, nullable=False, server_default="{}"))
        batch.add_column(sa.Column("metadata", sa.JSON, nullable=False, server_default="{}"))
        batch.add_column(
            sa.Column("priority", sa.String(16), nullable=False, server_default="interactive")
        )
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("previous_key_hash", sa.String(64), nullable=True))
        batch.add_column(
            sa.Column("previous_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_foreign_key("fk_api_keys_team", "teams", ["team_id"], ["id"])
    op.execute("UPDATE api_keys SET role = 'admin' WHERE scopes LIKE '%admin%'")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("scopes")


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("scopes", sa.String(200), nullable=False, server_default=""))
    op.execute("UPDATE api_keys SET scopes = 'admin' WHERE role = 'admin'")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint("fk_api_keys_team", type_="foreignkey")
        for column in (
            "updated_at",
            "previous_expires_at",
            "previous_key_hash",
            "expires_at",
            "priority",
            "metadata",
            "limits",
            "models",
            "team_id",
            "role",
        ):
            batch.drop_column(column)
    op.drop_table("teams")
    op.drop_table("orgs")
