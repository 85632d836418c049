"""A failing migration is reported by its statement: the file is split the way PostgreSQL
reads it (semicolons inside quotes, dollar-quoted bodies and comments do not end one)."""

from __future__ import annotations

from frontdesk.platform.migrations import PACKAGED, statements
from local.template import REPO


def test_statements_split_only_where_postgresql_would() -> None:
    sql = (
        "-- a comment; with a semicolon\n"
        "SELECT 'a;b', 'it''s';\n"
        'SELECT "odd;name" /* ; */ FROM t;\n'
        "CREATE FUNCTION f() RETURNS void AS $body$ BEGIN PERFORM 1; END $body$ LANGUAGE plpgsql;\n"
        "DO $$ BEGIN RAISE NOTICE 'x;y'; END $$\n"
    )
    assert statements(sql) == [
        "SELECT 'a;b', 'it''s'",
        'SELECT "odd;name"  FROM t',
        "CREATE FUNCTION f() RETURNS void AS $body$ BEGIN PERFORM 1; END $body$ LANGUAGE plpgsql",
        "DO $$ BEGIN RAISE NOTICE 'x;y'; END $$",
    ]


def test_the_layer_ships_the_repository_migrations() -> None:
    # The package's migrations folder is db/migrations (a link; sam build copies the files)
    shipped = sorted(p.name for p in PACKAGED.glob("*.sql"))
    assert shipped == sorted(p.name for p in (REPO / "db" / "migrations").glob("*.sql"))
    assert shipped and all(statements(p.read_text()) for p in PACKAGED.glob("*.sql"))
