"""What a SQL source lets a workflow read: one SELECT over declared tables and columns.

A data owner declares, per SQL source, the tables a workflow may read and the columns of
each (:class:`SqlScope`). :func:`check_sql` parses a query with sqlglot (never string
matching) and answers with a :class:`Verdict`: allowed, or refused with a one-line reason
and a stable ``rule`` id; :func:`require_sql` raises :class:`~codara.errors.ScopeError`
instead. The SQL connector calls it in ``plan`` before anything is sent to the database;
``codara sources check`` shows it to the data owner.

The check **fails closed**: whatever it cannot prove is inside the scope is refused.

``parse``
    sqlglot cannot tokenize or parse the query (in the source's dialect), or the checker
    itself failed on it.
``statements``
    Not exactly one statement (``SELECT 1; DROP TABLE x`` parses; it is refused here).
``write``
    Anything but a query: INSERT/UPDATE/DELETE/MERGE, DDL, PRAGMA, SET, COPY, CALL,
    EXPLAIN, ``SELECT ... INTO``, ``FOR UPDATE``/``FOR SHARE`` locks, a write inside a
    CTE (``WITH x AS (DELETE ... RETURNING ...)``).
``catalogue``
    A system catalogue (``sqlite_master``, ``pg_catalog.*``, any ``pg_*`` table,
    ``information_schema.*``, ``mysql.*``, ``performance_schema.*``, ``sys.*``,
    SQLite's ``pragma_*`` tables), a ``@@server_variable``, a ``::regclass``-style cast.
    Refused even when a scope declares them (:meth:`SqlScope.from_config` refuses that).
``function``
    A function that reads files, sleeps, locks, has side effects or reveals the server
    (``pg_read_file``, ``lo_import``, ``load_file``, ``readfile``, ``load_extension``,
    ``dblink``, ``pg_sleep``/``sleep``/``benchmark``, ``nextval``, ``set_config``,
    ``query_to_xml``, ``version()``, every ``pg_*``...), a schema-qualified function, and
    any function sqlglot does not know and the dialect's short built-in list (or the
    scope's ``functions``) does not name: a user-defined function can read any table.
``param``
    A parameter other than a named bind ``:name`` (``?``, ``$1``, ``@var``).
``source``
    A FROM/JOIN source that is not a table or a subquery: table functions
    (``read_csv(...)``, ``generate_series(...)``), ``VALUES``, ``UNNEST``.
``table``
    A table that is not declared. Names match as written, qualified or not: declaring
    ``public.customers`` does not allow ``customers`` (a search path could point it
    elsewhere). CTE names are resolved, never taken for tables.
``column``
    A column that is not allowed for the table it resolves to, or that cannot be resolved
    to one (unknown, ambiguous, a whole-row reference such as ``to_jsonb(c)``, a system
    column such as ``rowid``/``ctid``). Also what sqlglot would resolve differently from
    the server because the table has columns the scope does not list: ``NATURAL JOIN``
    (it compares every shared column), a select alias used bare in WHERE, GROUP BY, HAVING
    or ON (``SELECT name AS iban ... WHERE iban = ...`` reads the real ``iban`` on the
    server), a bare name that resolves to an outer query past an inner table not known
    to be complete (the server may find it in the inner table), a column alias list on
    a table (``customers AS t(a, b)`` renames by the table's real column order). ORDER BY
    (and DISTINCT ON) may name an output alias bare: all three servers read the alias.
``star``
    ``SELECT *`` or ``t.*`` over a table whose every column the scope does not know to be
    allowed. **Decision:** the checker cannot know a table's real columns from the list it
    is given, so a star is allowed only over tables named in ``SqlScope.complete``, which
    says the declared columns are all the table has (the SQL connector can confirm it
    against the database at load); it is then expanded by ``qualify`` and every column is
    reported. Over any other table it is refused. ``COUNT(*)`` reads no column: allowed.
``identifier``
    An identifier whose case folding differs between sqlglot and the server (non-ASCII
    letters with a case: SQLite and PostgreSQL fold only ASCII).
``ambiguous``
    (MySQL/MariaDB) syntax the server may read differently from the parser depending on
    its settings: executable comments ``/*! ... */``, double-quoted text (a string, or a
    column under ANSI_QUOTES), a backslash in a string (NO_BACKSLASH_ESCAPES).

Identifiers are compared as each dialect does: PostgreSQL folds unquoted names to lower
case (``"Customers"`` quoted is another table), SQLite ignores ASCII case, MySQL/MariaDB
compare column names without case and table names with it (Linux's default).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import OptimizeError, ParseError, TokenError
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope
from sqlglot.schema import MappingSchema
from sqlglot.tokenizer_core import Token, TokenType

from codara.errors import ConfigError, ScopeError

__all__ = ["DIALECTS", "SqlScope", "Verdict", "check_sql", "require_sql"]

DIALECTS = ("sqlite", "postgres", "mysql")
"""sqlglot dialect names a scope may use (``mysql`` also reads MariaDB)."""

MAX_SQL_CHARS = 100_000
"""A longer query is refused before parsing: the check's cost grows with the text."""

# A column name no query can write (NUL is not allowed in SQL identifiers): a table not
# known to be complete gets it in the schema handed to qualify, so a star over that table
# expands to include it and the column check refuses the star.
_UNLISTED = "\x00unlisted"

_BARE = "codara_unqualified"  # meta key: the column was written without a table

_CATALOGUE_SCHEMAS = frozenset(
    {"information_schema", "pg_catalog", "pg_toast", "mysql", "performance_schema", "sys"}
)
_CATALOGUE_PREFIXES = ("pg_", "sqlite_", "pragma_")

# Functions refused whatever a scope says, by what they would do.
_DENIED_BY_REASON: Mapping[str, tuple[str, ...]] = {
    "reads or writes files on the database server": (
        *("pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "lo_import"),
        *("lo_export", "lo_get", "lo_open", "load_file", "readfile", "writefile", "edit"),
        *("read_csv", "read_csv_auto", "read_json", "read_parquet", "read_text"),
    ),
    "runs code or SQL the scope cannot see": (
        *("load_extension", "fts3_tokenizer", "sys_exec", "sys_eval", "dblink", "dblink_exec"),
        *("query_to_xml", "query_to_xml_and_xmlschema", "cursor_to_xml", "table_to_xml"),
        *("schema_to_xml", "database_to_xml", "xpath_table", "exec", "execute"),
    ),
    "sleeps, locks or burns the server (denial of service)": (
        *("pg_sleep", "pg_sleep_for", "pg_sleep_until", "sleep", "benchmark", "get_lock"),
        *("release_lock", "release_all_locks", "is_free_lock", "is_used_lock"),
        *("master_pos_wait", "source_pos_wait", "randomblob", "zeroblob"),
    ),
    "changes or reveals session state": (
        *("nextval", "setval", "currval", "lastval", "set_config", "txid_current"),
        *("last_insert_rowid", "changes", "total_changes", "found_rows", "row_count"),
    ),
    "reveals the server, database or user": (
        *("version", "current_setting", "current_user", "session_user", "user", "system_user"),
        *("current_database", "current_schema", "current_catalog", "database", "schema"),
        *("connection_id", "inet_server_addr", "inet_server_port", "inet_client_addr"),
        *("currentuser", "currentdatabase", "currentschema", "currentversion"),
    ),
}
_DENIED_FUNCTIONS = {n: why for why, names in _DENIED_BY_REASON.items() for n in names}
_DENIED_PREFIXES = ("pg_", "lo_", "dblink", "sqlite_", "pragma_", "inet_", "txid_")

# Functions sqlglot does not model (it parses them as Anonymous) that are plain built-ins
# of the dialect and read nothing but their arguments. Any other unknown name is refused:
# it may be a user-defined function, which can read any table.
_BUILTINS: Mapping[str, frozenset[str]] = {
    "sqlite": frozenset(
        {
            *("julianday", "datetime", "time", "date", "unixepoch", "printf", "quote"),
            *("total", "likelihood", "likely", "unlikely", "octet_length", "json"),
            *("json_valid", "json_type", "json_array_length"),
        }
    ),
    "postgres": frozenset(
        {
            *("age", "json_build_object", "jsonb_build_object", "to_json", "to_jsonb"),
            *("jsonb_agg", "json_object_agg", "jsonb_object_agg", "cardinality"),
            *("regexp_match", "regexp_matches", "make_date", "make_time", "make_timestamp"),
            *("make_interval", "every", "statement_timestamp", "clock_timestamp", "date_bin"),
            *("jsonb_array_length", "json_array_length", "jsonb_typeof"),
        }
    ),
    "mysql": frozenset(
        {
            *("now", "sysdate", "unix_timestamp", "weekday", "field", "find_in_set"),
            *("json_unquote", "json_arrayagg", "json_objectagg", "json_length", "json_type"),
            *("json_valid", "dayname", "monthname"),
        }
    ),
}

_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# Statement kinds inside a query that are not reads (sqlglot keeps writes and DDL in its
# dml and ddl modules; these live elsewhere).
_NOT_READS: tuple[type[exp.Expr], ...] = (
    exp.Into,
    exp.Lock,
    exp.Grant,
    exp.Revoke,
    exp.Analyze,
    exp.Cache,
    exp.Refresh,
    exp.LockingStatement,
    exp.Put,
    exp.Get,
)
_READ_ONLY_DDL_NODES: tuple[type[exp.Expr], ...] = (exp.CharacterSet,)  # CONVERT(x USING cs)


def _no_query_text(record: logging.LogRecord) -> bool:
    """sqlglot logs the text of a query it parses as a Command; a query may hold personal
    values, and the refusal already says what it is."""
    return "contains unsupported syntax" not in record.getMessage()


logging.getLogger("sqlglot").addFilter(_no_query_text)


class _Refused(Exception):
    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.rule = rule
        self.reason = reason


@dataclass(frozen=True)
class Verdict:
    """The answer for one query: allowed, or refused with exactly why."""

    allowed: bool
    reason: str
    """"" when allowed; else one line saying what is refused and why."""
    rule: str
    """"" when allowed; else a stable id (see the module docstring)."""
    tables: tuple[str, ...] = ()
    """Declared tables the query touches (normalised names), as far as the check got."""
    columns: tuple[str, ...] = ()
    """``table.column`` it touches, sorted (only when the column check ran)."""
    params: tuple[str, ...] = ()
    """The named bind parameters it uses (``:name``), sorted."""


@dataclass(frozen=True)
class SqlScope:
    """The tables and columns of one SQL source a workflow may read.

    Build it with :meth:`from_config`, which validates and normalises the names; the
    constructor takes them as already normalised (table ``"schema.table"`` or
    ``"table"``, columns per table).
    """

    tables: Mapping[str, frozenset[str]]
    """Allowed table -> its allowed columns."""
    dialect: str
    """``sqlite``, ``postgres`` or ``mysql`` (MariaDB): sqlglot's dialect names."""
    complete: frozenset[str] = frozenset()
    """Tables whose declared columns are all the table has: ``SELECT *`` over them is
    allowed (and expanded). Empty by default: every star over a table is refused."""
    functions: frozenset[str] = frozenset()
    """Extra function names (lower case) the data owner allows beyond the built-ins
    sqlglot knows; never one of the refused ones."""
    _schema: MappingSchema = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.dialect not in DIALECTS:
            raise ConfigError(
                f"unknown SQL dialect {self.dialect!r}",
                hint=f"use one of {', '.join(DIALECTS)} (mysql also covers MariaDB)",
            )
        depths = {len(name.split(".")) for name in self.tables}
        if len(depths) > 1:
            raise ConfigError(
                "a scope's tables must be all schema-qualified or all unqualified",
                hint="write every table as schema.table, or none",
            )
        nested: dict[str, object] = {}
        for name, columns in self.tables.items():
            *schema, table = name.split(".")
            into = nested
            for part in schema:
                into = into.setdefault(part, {})  # type: ignore[assignment]
            cols = dict.fromkeys(sorted(columns), "TEXT")
            if name not in self.complete:
                cols[_UNLISTED] = "TEXT"
            into[table] = cols
        schema_ = MappingSchema(nested, dialect=self.dialect, normalize=False)
        object.__setattr__(self, "_schema", schema_)

    @classmethod
    def from_config(
        cls,
        tables: Mapping[str, Sequence[str]],
        dialect: str,
        *,
        complete: Iterable[str] = (),
        functions: Iterable[str] = (),
    ) -> SqlScope:
        """The scope ``codara.toml`` declares, its names checked and normalised as the
        dialect does (``Customers`` is ``customers`` on PostgreSQL, ``"Customers"``
        quoted stays). Raises ConfigError for a name that is not one, a system
        catalogue, an empty column list, ``*``, or a refused function."""
        if dialect not in DIALECTS:
            raise ConfigError(
                f"unknown SQL dialect {dialect!r}",
                hint=f"use one of {', '.join(DIALECTS)} (mysql also covers MariaDB)",
            )
        if not tables:
            raise ConfigError("a SQL scope declares no table", hint="list the tables it may read")
        normalised: dict[str, frozenset[str]] = {}
        for raw, columns in tables.items():
            name = _config_table(raw, dialect)
            if name in normalised:
                raise ConfigError(f"table {raw!r} is declared twice (as {name!r})")
            if isinstance(columns, str) or not columns:
                raise ConfigError(
                    f"table {raw!r} needs a list of the columns it may read",
                    hint='columns = ["id", "email"]',
                )
            normalised[name] = frozenset(_config_column(c, raw, dialect) for c in columns)
        whole = frozenset(_config_table(t, dialect) for t in complete)
        if unknown := whole - normalised.keys():
            raise ConfigError(
                f"complete names tables the scope does not declare: {sorted(unknown)}"
            )
        extra = frozenset(f.lower() for f in functions)
        for f in sorted(extra):
            if not _PARAM_NAME.match(f):
                raise ConfigError(f"{f!r} is not a function name")
            if why := _denied(f):
                raise ConfigError(f"function {f!r} cannot be allowed: it {why}")
        return cls(MappingProxyType(normalised), dialect, complete=whole, functions=extra)


def check_sql(sql: str, scope: SqlScope) -> Verdict:
    """Whether ``sql`` stays inside ``scope``. Never raises for a bad query: anything it
    cannot parse or place is a refused Verdict (fail closed)."""
    seen = _Seen()
    try:
        _check(sql, scope, seen)
    except _Refused as refused:
        return seen.verdict(refused.rule, refused.reason)
    except Exception as error:  # a parser or optimizer bug must refuse, never allow
        return seen.verdict(
            "parse", f"the query could not be analysed ({type(error).__name__}); refused"
        )
    return seen.verdict("", "")


def require_sql(sql: str, scope: SqlScope) -> Verdict:
    """:func:`check_sql`, raising ScopeError (with its ``rule``) when refused."""
    verdict = check_sql(sql, scope)
    if not verdict.allowed:
        raise ScopeError(
            verdict.reason,
            rule=verdict.rule,
            hint="`codara sources check SOURCE --sql ...` shows what the scope allows",
        )
    return verdict


@dataclass
class _Seen:
    tables: set[str] = field(default_factory=set)
    columns: set[str] = field(default_factory=set)
    params: set[str] = field(default_factory=set)

    def verdict(self, rule: str, reason: str) -> Verdict:
        return Verdict(
            allowed=not rule,
            reason=reason,
            rule=rule,
            tables=tuple(sorted(self.tables)),
            columns=tuple(sorted(self.columns)),
            params=tuple(sorted(self.params)),
        )


def _check(sql: str, scope: SqlScope, seen: _Seen) -> None:
    if len(sql) > MAX_SQL_CHARS:
        raise _Refused("parse", f"the query is over {MAX_SQL_CHARS} characters")
    dialect = Dialect.get_or_raise(scope.dialect)
    try:
        tokens = dialect.tokenize(sql)
        if scope.dialect == "mysql":
            _check_mysql_tokens(sql, tokens)
        parsed = [s for s in dialect.parser().parse(tokens, sql) if s is not None]
    except (ParseError, TokenError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise _Refused("parse", f"not valid {scope.dialect} SQL: {first}") from None
    if len(parsed) != 1:
        raise _Refused(
            "statements",
            "the query is empty" if not parsed else f"{len(parsed)} statements; one is allowed",
        )
    tree = parsed[0]
    if not isinstance(tree, exp.Select | exp.SetOperation | exp.Subquery):
        raise _Refused("write", f"only a SELECT may run; this is {_kind(tree)}")
    _check_nodes(tree, scope, seen)
    _check_tables(tree, scope, seen)
    _check_columns(tree, scope, seen)


def _kind(node: exp.Expr) -> str:
    if isinstance(node, exp.Command):
        return f"a {node.name.upper() or 'command'} command"
    return f"a {node.key.upper()} statement"


def _check_mysql_tokens(sql: str, tokens: list[Token]) -> None:
    for token in tokens:
        for comment in token.comments:
            if comment.lstrip().startswith(("!", "M!")):
                raise _Refused(
                    "ambiguous",
                    "a /*! ... */ comment is code MySQL/MariaDB runs and the check cannot see",
                )
        if token.token_type in (TokenType.STRING, TokenType.NATIONAL_STRING):
            raw = sql[token.start : token.end + 1]
            if raw.lstrip("nN_").startswith('"'):
                raise _Refused(
                    "ambiguous",
                    "double-quoted text is a string or a column depending on the server's "
                    "ANSI_QUOTES mode; quote strings with '...' and names with `...`",
                )
            if "\\" in raw:
                raise _Refused(
                    "ambiguous",
                    "a backslash in a string is read two ways (NO_BACKSLASH_ESCAPES); "
                    "pass the value as a :name parameter",
                )


def _is_write(node: exp.Expr) -> bool:
    module = type(node).__module__
    if module.endswith((".dml", ".ddl")):
        return not isinstance(node, _READ_ONLY_DDL_NODES)
    return isinstance(node, _NOT_READS)


def _check_nodes(tree: exp.Expr, scope: SqlScope, seen: _Seen) -> None:
    """Everything decidable node by node, in a fixed order of rules so that a query
    breaking several gets the same rule every time."""
    nodes = list(tree.walk())
    for node in nodes:
        if _is_write(node):
            what = "a row lock (FOR UPDATE/SHARE)" if isinstance(node, exp.Lock) else _kind(node)
            raise _Refused("write", f"only a SELECT may run; the query contains {what}")
    for node in nodes:
        if isinstance(node, exp.Table) and (why := _catalogue(node)):
            raise _Refused("catalogue", why)
        if isinstance(node, exp.SessionParameter) or (
            isinstance(node, exp.Parameter) and isinstance(node.this, exp.Parameter)
        ):
            raise _Refused("catalogue", f"{node.sql(scope.dialect)} reads a server variable")
        if isinstance(node, exp.ObjectIdentifier):
            raise _Refused("catalogue", f"a cast to {node.sql(scope.dialect)} reads the catalogue")
    for node in nodes:
        if isinstance(node, exp.Func):
            _check_function(node, scope)
        if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
            raise _Refused(
                "function", f"{node.sql(scope.dialect)} calls a schema-qualified function"
            )
    for node in nodes:
        if isinstance(node, exp.Placeholder):
            name = node.name
            if not name or not _PARAM_NAME.match(name):
                raise _Refused(
                    "param",
                    f"parameter {node.sql(scope.dialect)} is not a named bind; use :name",
                )
            seen.params.add(name)
        elif isinstance(node, exp.Parameter):
            raise _Refused(
                "param", f"{node.sql(scope.dialect)} is not a named bind parameter; use :name"
            )
    for node in nodes:
        if isinstance(node, exp.From | exp.Join | exp.Lateral):
            _check_source(node.this, scope)
        elif isinstance(node, exp.Values | exp.Unnest | exp.UDTF) and not isinstance(
            node, exp.Lateral
        ):
            raise _Refused("source", f"{node.key.upper()} is not a declared table")
    for node in nodes:
        if isinstance(node, exp.Identifier):
            _check_identifier(node, scope)
        elif isinstance(node, exp.Join) and node.method.upper() == "NATURAL":
            raise _Refused(
                "column",
                "NATURAL JOIN compares every column the tables share, including ones outside "
                "the scope; write JOIN ... ON",
            )
        elif isinstance(node, exp.TableColumn):
            raise _Refused("column", f"{node.sql(scope.dialect)} is a whole-row reference")
        elif (
            isinstance(node, exp.TableAlias) and node.columns and isinstance(node.parent, exp.Table)
        ):
            raise _Refused(
                "column",
                f"{node.name}(...) renames the table's columns by position, and "
                "the check does not know their order; alias the columns in a subquery",
            )


def _short(node: exp.Expr, scope: SqlScope) -> str:
    text = node.sql(scope.dialect)
    return text if len(text) <= 60 else text[:57] + "..."


def _catalogue(table: exp.Table) -> str:
    parts = [p.name.lower() for p in table.parts if isinstance(p, exp.Identifier)]
    name = parts[-1] if parts else ""
    if isinstance(table.this, exp.Func):
        name = _function_names(table.this)[0]
    schemas = parts[:-1]
    if any(s in _CATALOGUE_SCHEMAS or s.startswith("pg_") for s in schemas):
        return f"{'.'.join(parts)} is in a system catalogue"
    if name.startswith(_CATALOGUE_PREFIXES) or name in _CATALOGUE_SCHEMAS:
        return f"{name} is a system catalogue"
    return ""


def _function_names(func: exp.Func) -> list[str]:
    if isinstance(func, exp.Anonymous):
        return [func.name.lower()]
    return [n.lower() for n in type(func).sql_names()] + [type(func).__name__.lower()]


def _denied(name: str) -> str:
    if name in _DENIED_FUNCTIONS:
        return _DENIED_FUNCTIONS[name]
    if name.startswith(_DENIED_PREFIXES):
        return "is a system function"
    return ""


def _check_function(func: exp.Func, scope: SqlScope) -> None:
    names = _function_names(func)
    for name in names:
        if why := _denied(name):
            raise _Refused("function", f"function {names[0]}() is refused: it {why}")
    if isinstance(func, exp.Anonymous):
        name = names[0]
        if name not in _BUILTINS[scope.dialect] and name not in scope.functions:
            raise _Refused(
                "function",
                f"function {name}() is not a built-in the check knows; a user-defined "
                "function can read outside the scope (a data owner may allow it in "
                "the source's functions)",
            )


def _check_source(source: exp.Expr | None, scope: SqlScope) -> None:
    if isinstance(source, exp.Table) and isinstance(source.this, exp.Identifier):
        return
    if isinstance(source, exp.Subquery | exp.Lateral):
        return
    if isinstance(source, exp.Table) and isinstance(source.this, exp.Func):
        what = f"table function {_function_names(source.this)[0]}()"
    else:
        what = source.key.upper() if source is not None else "an empty source"
    raise _Refused("source", f"FROM/JOIN reads {what}, which is not a declared table or a subquery")


def _check_identifier(ident: exp.Identifier, scope: SqlScope) -> None:
    name = ident.this if isinstance(ident.this, str) else ""
    if "\x00" in name:
        raise _Refused("identifier", "an identifier contains a NUL character")
    if scope.dialect == "postgres" and ident.quoted:
        return  # quoted: PostgreSQL keeps it exactly, and so does sqlglot
    if any(ord(ch) > 127 and (ch.lower() != ch or ch.upper() != ch) for ch in name):
        raise _Refused(
            "identifier",
            f"identifier {name!r} has non-ASCII letters, whose case the server may fold "
            "differently from the check",
        )


def _table_name(table: exp.Table, scope: SqlScope, *, folded: bool = False) -> str:
    """The table's name as the scope keys it: each part folded as the dialect folds it
    (already done by qualify when ``folded``)."""
    if folded:
        parts = [p.name for p in table.parts]
    else:
        dialect = Dialect.get_or_raise(scope.dialect)
        parts = [dialect.normalize_identifier(p.copy()).name for p in table.parts]
    if any("." in p for p in parts):
        raise _Refused("table", f"table name {table.sql(scope.dialect)} contains a dot")
    return ".".join(parts)


def _check_tables(tree: exp.Expr, scope: SqlScope, seen: _Seen) -> None:
    """Every table, wherever it is, is either a CTE this query defines or declared."""
    placed: set[int] = set()
    for sc in traverse_scope(tree):
        for table in sc.tables:
            placed.add(id(table))
            source = sc.sources.get(table.alias_or_name)
            if isinstance(source, Scope):
                if table.args.get("db") or table.args.get("catalog"):
                    raise _Refused(
                        "table",
                        f"{table.sql(scope.dialect)} is qualified but names a CTE of this "
                        "query; the database would read a real table",
                    )
                continue
            if source is not table:
                raise _Refused("table", f"table {table.sql(scope.dialect)} cannot be resolved")
            name = _table_name(table, scope)
            if name not in scope.tables:
                declared = ", ".join(sorted(scope.tables))
                raise _Refused(
                    "table", f"table {name} is not in this source's scope (declared: {declared})"
                )
            seen.tables.add(name)
    for table in tree.find_all(exp.Table):
        if id(table) not in placed:
            raise _Refused(
                "table", f"table {table.sql(scope.dialect)} is used where it cannot be checked"
            )


def _fold_mysql_columns(tree: exp.Expr) -> None:
    """MySQL/MariaDB compare column names (and column aliases) without case; sqlglot
    treats MySQL identifiers as case-sensitive (right for tables on Linux). Fold the
    column side to lower case, as the scope's column names are."""
    for node in tree.walk():
        if isinstance(node, exp.Column) and isinstance(node.this, exp.Identifier):
            node.this.set("this", node.this.name.lower())
        elif isinstance(node, exp.Alias) and isinstance(node.args.get("alias"), exp.Identifier):
            node.args["alias"].set("this", node.alias.lower())
        elif isinstance(node, exp.TableAlias):
            for col in node.columns:
                col.set("this", col.name.lower())
        elif isinstance(node, exp.Join):
            for ident in node.args.get("using") or []:
                if isinstance(ident, exp.Identifier):
                    ident.set("this", ident.name.lower())


def _check_columns(tree: exp.Expr, scope: SqlScope, seen: _Seen) -> None:
    """Qualify every column against the scope's schema, then check each one against the
    table it resolves to, scope by scope."""
    if scope.dialect == "mysql":
        _fold_mysql_columns(tree)
    for written in tree.find_all(exp.Column):
        if not written.table:
            written.meta[_BARE] = True
    _check_alias_refs(tree)
    try:
        qualified = qualify(
            tree,
            dialect=scope.dialect,
            schema=scope._schema,
            validate_qualify_columns=True,
            quote_identifiers=False,
            identify=False,
        )
    except OptimizeError as error:
        first = str(error).splitlines()[0]
        raise _Refused(
            "column", f"a column is outside the scope or cannot be resolved: {first}"
        ) from None
    owner: dict[int, Scope] = {}
    for sc in traverse_scope(qualified):
        for inner in sc.walk():
            if isinstance(inner, exp.Column):
                owner[id(inner)] = sc
    for item in qualified.walk():
        if isinstance(item, exp.Star) and not isinstance(item.parent, exp.Count | exp.Column):
            raise _Refused("star", "SELECT * here reads columns the check cannot list")
        if isinstance(item, exp.TableColumn):
            raise _Refused("column", f"{item.sql(scope.dialect)} is a whole-row reference")
        if not isinstance(item, exp.Column):
            continue
        where = owner.get(id(item))
        if where is None:
            raise _Refused("column", f"column {item.sql(scope.dialect)} cannot be placed")
        _check_column(item, where, scope, seen)


def _check_alias_refs(tree: exp.Expr) -> None:
    """sqlglot reads a bare ``x`` in WHERE, GROUP BY, HAVING or ON as the select alias x
    where one exists; the database may read a column x of the table instead, one the
    scope does not list (PostgreSQL does in WHERE and GROUP BY). Refuse the ambiguity."""
    for select in tree.find_all(exp.Select):
        aliases = {
            p.alias.lower()
            for p in select.expressions
            if isinstance(p, exp.Alias)
            and not (isinstance(p.this, exp.Column) and p.this.name.lower() == p.alias.lower())
        }
        if not aliases:
            continue
        clauses = [select.args.get(k) for k in ("where", "group", "having", "qualify")]
        clauses += [j.args.get("on") for j in select.args.get("joins") or []]
        for clause in clauses:
            for col in clause.find_all(exp.Column) if clause else ():
                if not col.table and col.name.lower() in aliases:
                    raise _Refused(
                        "column",
                        f"{col.name} is a select alias used in WHERE/GROUP BY/HAVING/ON, where "
                        "the database may read a column of that name instead; repeat the "
                        "expression",
                    )


def _check_column(col: exp.Column, sc: Scope, scope: SqlScope, seen: _Seen) -> None:
    if isinstance(col.this, exp.Star):
        raise _Refused("star", f"{col.sql(scope.dialect)} reads columns the check cannot list")
    if not col.table:
        # ORDER BY (and PostgreSQL's DISTINCT ON, which follows its rules) a bare output
        # name reads that output; inside an expression the name would be an input column,
        # one the scope may not list.
        holder = col.parent.parent if isinstance(col.parent, exp.Ordered | exp.Tuple) else None
        query = holder.parent if isinstance(holder, exp.Order | exp.Distinct) else None
        if isinstance(query, exp.Query) and col.name in query.named_selects:
            return
        raise _Refused(
            "column",
            f"{col.sql(scope.dialect)} is not a column of any table in the query "
            "(a whole-row or system reference?)",
        )
    source: object = None
    level: Scope | None = sc
    passed: list[Scope] = []
    while level is not None and source is None:
        source = level.sources.get(col.table)
        if source is None:
            passed.append(level)
        level = level.parent
    if col.meta.get(_BARE) and any(_has_unlisted(inner, scope) for inner in passed):
        # An unqualified name sqlglot resolves to an outer query because the inner table
        # lacks it, where the database may find an unlisted column of that inner table.
        raise _Refused(
            "column",
            f"unqualified column {col.name} resolves to an outer query past a table whose "
            "columns the scope does not all list; qualify it (alias.column)",
        )
    if isinstance(source, Scope):
        return  # a CTE or subquery: its own columns are checked in its scope
    if not isinstance(source, exp.Table):
        raise _Refused("column", f"column {col.sql(scope.dialect)} cannot be resolved")
    table = _table_name(source, scope, folded=True)
    allowed = scope.tables.get(table, frozenset())
    if col.name == _UNLISTED:
        raise _Refused(
            "star",
            f"* over {table} reads every column it has, and the scope does not say those "
            "are all allowed; name the columns",
        )
    if col.name not in allowed:
        raise _Refused(
            "column",
            f"column {col.name} of {table} is not in the scope "
            f"(allowed: {', '.join(sorted(allowed))})",
        )
    seen.columns.add(f"{table}.{col.name}")


def _has_unlisted(sc: Scope, scope: SqlScope) -> bool:
    """Whether ``sc`` reads a table that may have columns the scope does not list."""
    return any(
        isinstance(source, exp.Table)
        and _table_name(source, scope, folded=True) not in scope.complete
        for source in sc.sources.values()
    )


def _config_table(raw: str, dialect: str) -> str:
    try:
        table = sqlglot.parse_one(raw, read=dialect, into=exp.Table)
    except (ParseError, TokenError):
        table = None
    if (
        not isinstance(table, exp.Table)
        or not isinstance(table.this, exp.Identifier)
        or table.args.get("catalog")
        or table.alias
    ):
        raise ConfigError(
            f"{raw!r} is not a table name", hint='write "table" or "schema.table"'
        ) from None
    table = normalize_identifiers(table, dialect=dialect)
    parts = [p.name for p in table.parts]
    if any("." in p or "\x00" in p or not p for p in parts):
        raise ConfigError(f"table name {raw!r} has an empty part, a dot or a NUL in a name")
    if why := _catalogue(table):
        raise ConfigError(f"{raw!r} cannot be declared: {why}")
    return ".".join(parts)


def _config_column(raw: object, table: str, dialect: str) -> str:
    column = None
    if isinstance(raw, str):
        try:
            column = sqlglot.parse_one(raw, read=dialect)
        except (ParseError, TokenError):
            column = None
    if (
        not isinstance(column, exp.Column)
        or not isinstance(column.this, exp.Identifier)
        or column.table
    ):
        hint = "list the columns by name" if raw == "*" else "a bare column name, as in SQL"
        raise ConfigError(f"{raw!r} (table {table!r}) is not a column name", hint=hint)
    name = normalize_identifiers(column, dialect=dialect).name
    if "\x00" in name:
        raise ConfigError(f"column name {raw!r} (table {table!r}) contains a NUL")
    return name.lower() if dialect == "mysql" else name
