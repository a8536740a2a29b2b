"""The schema comes from the Alembic migrations, and they match the models."""
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from quaero.models import Base, init_db, not_search_index


def test_migrations_build_the_models_schema(database_url):
    engine = sa.create_engine(database_url)
    init_db(engine)
    init_db(engine)  # idempotent
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True,
                                                 "include_object": not_search_index})
        diff = compare_metadata(ctx, Base.metadata)
        assert diff == [], f"models changed without a migration: {diff}"
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        keys = set(conn.execute(sa.text("SELECT key FROM line_counters")).scalars())
        assert {"__id__", "service"} <= keys
    engine.dispose()
