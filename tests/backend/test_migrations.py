"""The migrations build exactly the schema the models describe, on Postgres and on SQLite."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from alembic import command
from backend.models import Base

TABLES = {
    *("users", "api_tokens", "jobs", "photos", "artifacts", "generations", "workers"),
    *("webhook_events", "webhook_deliveries"),
}


def schema_differences(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_postgres_upgrade_matches_the_models_and_downgrades(empty_database_url, alembic_config):
    config = alembic_config(empty_database_url)
    command.upgrade(config, "head")
    assert schema_differences(empty_database_url) == []
    command.downgrade(config, "base")
    assert table_names(empty_database_url) == {"alembic_version"}


def test_sqlite_upgrade_matches_the_models(tmp_path, alembic_config):
    url = f"sqlite:///{tmp_path / 'nested' / 'studio.db'}"
    command.upgrade(alembic_config(url), "head")
    assert table_names(url) == TABLES | {"alembic_version"}
    assert schema_differences(url) == []
