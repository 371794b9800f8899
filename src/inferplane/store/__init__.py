"""Database engine, tables and Alembic migrations (SQLite by default)."""
