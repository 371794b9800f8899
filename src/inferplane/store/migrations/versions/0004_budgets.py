"""budgets on keys and teams

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("api_keys", "teams"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("budget", sa.JSON, nullable=True))


def downgrade() -> None:
    for table in ("api_keys", "teams"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("budget")
