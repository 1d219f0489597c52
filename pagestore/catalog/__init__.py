"""The layer catalog: PostgreSQL-backed source of truth for tenants, timelines, layers
and LSN leases (SQLAlchemy 2 models in models.py, Alembic migrations in migrations/)."""
