"""Where the tables live: a schema of their own (`sessionkeeper` unless SESSIONKEEPER_DB_SCHEMA
says otherwise), never `public`, where a bot's own app may keep tables named `sessions` or
`schema_migrations`.

Every connection gets `search_path` set to that schema alone, so the SQL (and the migrations'
unqualified names) finds our tables and nothing else. A store made before the schema existed
has its tables in `public`: the migration runner moves them (`move_from_public`), but only
when public's `schema_migrations` is recognisably ours.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.errors import UserError
from app.log import get_logger

if TYPE_CHECKING:
    from app.store.migrate import Migration
    from app.store.repo import Conn

DEFAULT_SCHEMA = "sessionkeeper"
# A plain lower-case identifier: safe in a startup parameter and in quotes alike.
SCHEMA_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"
MIGRATE_HINT = "run `sessionkeeper migrate` (with the owner role's DATABASE_URL)"

_CREATED_TABLE = re.compile(r"\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?([a-z_][a-z0-9_]*)",
                            re.IGNORECASE)
_CREATED_FUNCTION = re.compile(
    r"\bCREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+([a-z_][a-z0-9_]*)\s*\(", re.IGNORECASE)


class SchemaNotReady(UserError):
    """The store is missing, behind the code, or still in `public`, and this process may not
    (or was told not to) migrate it."""


def quoted(schema: str) -> str:
    """The schema as a quoted identifier (the name is checked by SCHEMA_PATTERN already)."""
    if not re.fullmatch(SCHEMA_PATTERN, schema):
        raise UserError(f"bad schema name {schema!r}")
    return f'"{schema}"'


def server_settings(schema: str) -> dict[str, str]:
    """Startup parameters that point every unqualified name at our schema, and only there
    (pg_catalog is always searched; `public` is not)."""
    return {"search_path": quoted(schema)}


@dataclass(frozen=True)
class StoreState:
    """What a read-only look at the database found."""

    schema_exists: bool
    versions: frozenset[int]  # recorded in <schema>.schema_migrations (empty: none)
    has_table: bool  # <schema>.schema_migrations exists
    legacy_in_public: bool  # our tables are still in public


async def _ours_in_public(conn: Conn, known: dict[int, str]) -> bool:
    """True when public.schema_migrations is the table our runner made there (its columns,
    and rows naming our own migrations), not another app's table of the same name."""
    columns = {r["attname"] for r in await conn.fetch(
        "SELECT attname FROM pg_catalog.pg_attribute "
        "WHERE attrelid = to_regclass('public.schema_migrations') AND attnum > 0 "
        "AND NOT attisdropped")}
    if not {"version", "name", "checksum", "applied_at"} <= columns:
        return False
    try:
        rows = await conn.fetch("SELECT version::int AS version, name::text AS name "
                                "FROM public.schema_migrations")
    except Exception:  # a column of another type: not ours
        return False
    recorded = {r["version"]: r["name"] for r in rows}
    return recorded.get(1) == known.get(1) and all(
        known.get(v, n) == n for v, n in recorded.items())


async def read_state(conn: Conn, schema: str, known: dict[int, str]) -> StoreState:
    """The store's state, without writing anything."""
    exists = bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)", schema))
    table = bool(exists and await conn.fetchval(
        "SELECT to_regclass($1) IS NOT NULL", f"{quoted(schema)}.schema_migrations"))
    versions: frozenset[int] = frozenset()
    if table:
        versions = frozenset(r["version"] for r in await conn.fetch(
            f"SELECT version FROM {quoted(schema)}.schema_migrations"))
    legacy = (schema != "public" and not table
              and bool(await conn.fetchval("SELECT to_regclass('public.schema_migrations') "
                                           "IS NOT NULL"))
              and await _ours_in_public(conn, known))
    return StoreState(exists, versions, table, legacy)


def pending(state: StoreState, wanted: Sequence[Migration]) -> list[Migration]:
    """The migrations not recorded yet."""
    return [m for m in wanted if m.version not in state.versions]


async def require_current(conn: Conn, schema: str, wanted: Sequence[Migration]) -> None:
    """SchemaNotReady, one line saying what to do, unless every migration is applied."""
    state = await read_state(conn, schema, {m.version: m.name for m in wanted})
    if state.legacy_in_public:
        raise SchemaNotReady(f"the sessionkeeper tables are still in schema public: {MIGRATE_HINT} "
                             f"to move them into schema {schema!r}")
    if not state.has_table:
        raise SchemaNotReady(f"the database has no sessionkeeper tables in schema {schema!r}: "
                             f"{MIGRATE_HINT}")
    missing = pending(state, wanted)
    if missing:
        raise SchemaNotReady(
            f"the database schema {schema!r} is behind this version of sessionkeeper "
            f"(migration {missing[0].version:04d}_{missing[0].name} and {len(missing) - 1} more "
            f"not applied): {MIGRATE_HINT}")


def created_objects(migrations: Sequence[Migration]) -> tuple[list[str], list[str]]:
    """Tables and functions these migrations create (by name), plus the runner's own table."""
    tables = ["schema_migrations"]
    functions: list[str] = []
    for m in migrations:
        tables += [t.lower() for t in _CREATED_TABLE.findall(m.sql) if t.lower() not in tables]
        functions += [f.lower() for f in _CREATED_FUNCTION.findall(m.sql)
                      if f.lower() not in functions]
    return tables, functions


async def move_from_public(conn: Conn, schema: str, migrations: Sequence[Migration]) -> None:
    """Move a store made before the schema (tables, their indexes, constraints and triggers,
    and the migrations' functions) from public into `schema`, in one transaction. The caller
    holds the migration lock and has checked that public.schema_migrations is ours."""
    recorded = {r["version"] for r in await conn.fetch(
        "SELECT version FROM public.schema_migrations")}
    tables, functions = created_objects([m for m in migrations if m.version in recorded])
    moved_tables: list[str] = []
    moved_functions: list[str] = []
    exists = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)", schema)
    async with conn.transaction():
        if not exists:
            await conn.execute(f"CREATE SCHEMA {quoted(schema)}")
        for table in tables:
            if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"public.{table}"):
                await conn.execute(f'ALTER TABLE public."{table}" SET SCHEMA {quoted(schema)}')
                moved_tables.append(table)
        for signature in await conn.fetch(
                "SELECT p.oid::regprocedure::text AS sig FROM pg_catalog.pg_proc p "
                "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = 'public' AND p.proname = ANY($1::text[])", functions):
            # regprocedure text is qualified only when public is not on the search_path.
            sig = signature["sig"]
            name = sig if sig.startswith("public.") else f"public.{sig}"
            await conn.execute(f"ALTER FUNCTION {name} SET SCHEMA {quoted(schema)}")
            moved_functions.append(sig.removeprefix("public."))
    get_logger().info("store_moved_to_schema", schema=schema, tables=moved_tables,
                      functions=moved_functions)


async def pin_function_paths(conn: Conn, schema: str) -> None:
    """Give the schema's functions (the fencing trigger) a search_path of their own, so they
    find our tables whoever fires them (an owner in psql with the default search_path would
    otherwise reach public's `sessions`, which may be another app's)."""
    rows = await conn.fetch(
        "SELECT p.oid::regprocedure::text AS sig FROM pg_catalog.pg_proc p "
        "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = $1 AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c "
        "WHERE c LIKE 'search_path=%')", schema)
    for row in rows:
        sig = row["sig"]
        name = sig if sig.startswith(f"{schema}.") or sig.startswith(f'"{schema}".') \
            else f"{quoted(schema)}.{sig}"
        await conn.execute(f"ALTER FUNCTION {name} SET search_path = {quoted(schema)}, pg_temp")
