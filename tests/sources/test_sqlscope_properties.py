"""Property tests of the SQL scope check: any query built only from the scope's tables and
columns is allowed (joins, WHERE with subqueries, GROUP BY, ORDER BY, a CTE, a UNION,
any identifier case the dialect folds, quoting), and the same query with one column
outside the scope put anywhere in it is refused."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codara.sources._sqlscope import SqlScope, check_sql

TABLES = {
    "customers": ["id", "name", "email", "created_at"],
    "orders": ["id", "customer_id", "amount", "status"],
}
ALIAS = {"customers": "c", "orders": "o"}
HIDDEN = {"customers": ["iban", "ssn"], "orders": ["card_number"]}
"""Columns the real tables have that the scope does not list."""
QUOTE = {"sqlite": '"{}"', "postgres": '"{}"', "mysql": "`{}`"}
PLACES = ("select", "where", "order", "group", "join", "subquery")


@dataclass
class Query:
    dialect: str
    tables: list[str]
    params: set[str] = field(default_factory=set)
    parts: dict[str, str] = field(default_factory=dict)


def scope(dialect: str) -> SqlScope:
    return SqlScope.from_config(TABLES, dialect)


@st.composite
def identifier(draw: st.DrawFn, dialect: str, name: str, *, table: bool = False) -> str:
    """``name`` as a query may write it: quoted, or in any case the dialect folds (MySQL
    compares table names with case, so those keep theirs)."""
    if draw(st.booleans()):
        return QUOTE[dialect].format(name)
    if table and dialect == "mysql":
        return name
    return "".join(ch.upper() if draw(st.booleans()) else ch for ch in name)


@st.composite
def queries(draw: st.DrawFn, inject: str | None = None) -> tuple[str, str, Query]:
    """A random query inside the scope, as (dialect, sql, facts). With ``inject`` (a place
    from PLACES), one column outside the scope is written at that place."""
    dialect = draw(st.sampled_from(["sqlite", "postgres", "mysql"]))
    base = draw(st.sampled_from(sorted(TABLES)))
    joined = draw(st.booleans()) or inject == "join"
    used = [base] + ([next(t for t in TABLES if t != base)] if joined else [])
    q = Query(dialect, used)

    def col(table: str, name: str) -> str:
        return f"{ALIAS[table]}.{draw(identifier(dialect, name))}"

    def hidden() -> str:
        table = draw(st.sampled_from(used))
        return col(table, draw(st.sampled_from(HIDDEN[table])))

    def param() -> str:
        name = f"p{len(q.params)}"
        q.params.add(name)
        return f":{name}"

    available = [(t, c) for t in used for c in TABLES[t]]
    picked = draw(st.lists(st.sampled_from(available), min_size=1, max_size=4, unique=True))
    grouped = draw(st.booleans()) or inject == "group"
    projections = [f"{col(t, c)} AS {ALIAS[t]}_{c}" for t, c in picked]
    if grouped:
        projections.append("count(*) AS n")
    if inject == "select":
        projections.insert(draw(st.integers(0, len(projections))), hidden())

    sources = f"{draw(identifier(dialect, base, table=True))} {ALIAS[base]}"
    if joined:
        other = used[1]
        kind = draw(st.sampled_from(["JOIN", "LEFT JOIN", "INNER JOIN"]))
        on = f"{col('orders', 'customer_id')} = {col('customers', 'id')}"
        if inject == "join":
            on += f" AND {hidden()} IS NOT NULL"
        sources += f" {kind} {draw(identifier(dialect, other, table=True))} {ALIAS[other]} ON {on}"

    conditions = []
    for _ in range(draw(st.integers(0, 3))):
        t, c = draw(st.sampled_from(available))
        shape = draw(st.sampled_from(["eq", "null", "in", "like"]))
        if shape == "eq":
            conditions.append(f"{col(t, c)} = {param()}")
        elif shape == "null":
            conditions.append(f"{col(t, c)} IS NOT NULL")
        elif shape == "like":
            conditions.append(f"{col(t, c)} LIKE {param()}")
        else:
            conditions.append(
                f"{col(t, c)} IN (SELECT o2.customer_id FROM orders o2 WHERE o2.amount > {param()})"
            )
    if inject == "where":
        conditions.append(f"{hidden()} = {param()}")
    if inject == "subquery":
        table = draw(st.sampled_from(sorted(TABLES)))
        name = draw(st.sampled_from(HIDDEN[table]))
        conditions.append(f"EXISTS (SELECT 1 FROM {table} s WHERE s.{name} = {param()})")

    sql = f"SELECT {', '.join(projections)} FROM {sources}"
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    if grouped:
        keys = [col(t, c) for t, c in picked]
        if inject == "group":
            keys.append(hidden())
        sql += " GROUP BY " + ", ".join(keys)
    outputs = [f"{ALIAS[t]}_{c}" for t, c in picked]
    if draw(st.booleans()) or inject == "order":
        ordered = draw(st.lists(st.sampled_from(outputs), min_size=1, unique=True))
        keys = [f"{o} {draw(st.sampled_from(['', 'ASC', 'DESC']))}".strip() for o in ordered]
        if inject == "order":
            keys.append(hidden())
        sql += " ORDER BY " + ", ".join(keys)
    wrap = draw(st.sampled_from(["none", "cte", "union", "derived"]))
    if inject is None and wrap == "cte":
        sql = f"WITH q AS ({sql}) SELECT {', '.join(outputs)} FROM q"
    elif inject is None and wrap == "union" and "ORDER BY" not in sql:
        sql = f"{sql} UNION ALL {sql} ORDER BY 1"
    elif inject is None and wrap == "derived":
        sql = f"SELECT x.{outputs[0]} FROM ({sql}) AS x"
    return dialect, sql, q


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(queries())
def test_any_query_built_from_the_scope_is_allowed(case: tuple[str, str, Query]) -> None:
    dialect, sql, q = case
    verdict = check_sql(sql, scope(dialect))
    assert verdict.allowed, f"{sql}\n{verdict.reason}"
    assert set(q.tables) <= set(verdict.tables) <= set(TABLES)
    for touched in verdict.columns:
        table, _, name = touched.partition(".")
        assert name in TABLES[table], touched
    assert set(verdict.params) == q.params


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PLACES).flatmap(lambda place: queries(inject=place)))
def test_one_column_outside_the_scope_anywhere_is_refused(case: tuple[str, str, Query]) -> None:
    dialect, sql, _ = case
    verdict = check_sql(sql, scope(dialect))
    assert not verdict.allowed, sql
    assert verdict.rule == "column", f"{sql}\n{verdict.reason}"
    assert not any(touched.endswith(("iban", "ssn", "card_number")) for touched in verdict.columns)
