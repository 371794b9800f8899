"""team weights for fair sharing of contended models

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("teams") as batch:
        batch.add_column(sa.Column("weight", sa.Float, nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("teams") as batch:
        batch.drop_column("weight")
