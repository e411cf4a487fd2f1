"""Schemathesis against the OpenAPI spec, with an admin token, on SQLite and on PostgreSQL, with
all of schemathesis's checks: no input gives a 5xx, and every response keeps the API's own
contract (its status is documented for the route, its body matches the documented schema,
a 405 names the allowed methods, a request without credentials is refused, ...).

Path ids are random strings most of the time; for a part of the cases they are swapped for the
ids of real waiting runs and review items (seeded below), so that fuzzed bodies also reach
the decision code (edits checked against the proposal's schema, reject reasons, claims).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi

import codara
from codara.api import create_app

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Seeded  # tests/api/conftest.py

SEEDED_RUNS = 16
# Examples, coverage (boundary and negative cases of every parameter and body) and fuzzing for
# each route; stateful: sequences along the links schemathesis infers (a run's id from
# POST /api/runs into GET /api/runs/{run_id}, ...), in test_call_sequences_keep_the_contract.
# Routes whose 422 is a rule no schema can state (a delegate who exists and holds the role, an
# input the workflow's own type accepts, a reason the policy lists, an edit of the original's
# shape, low-risk items only): for them a schema-valid request may get 422 (documented).
BUSINESS_RULES = [
    "POST /api/runs",
    "POST /api/reviews/bulk-approve",
    "POST /api/reviews/{review_id}/delegate",
    "POST /api/reviews/{review_id}/edit",
    "POST /api/reviews/{review_id}/reject",
]
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "422", "429"]
CONFIG = SchemathesisConfig.from_dict(
    {
        "phases": {"coverage": {"enabled": True}, "stateful": {"enabled": True}},
        "operations": [
            {
                "include-name": name,
                "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED}},
            }
            for name in BUSINESS_RULES
        ],
    }
)
load_all_checks()
ALL_CHECKS = list(CHECKS.get_all())  # what `schemathesis run --checks all` runs


async def _seed_runs(app: codara.App) -> tuple[list[str], list[str]]:
    async with app:
        inputs = [
            {"amount": 10.0 + i, "confidence": 0.5, "low_risk": i % 2 == 0}
            for i in range(SEEDED_RUNS)
        ]
        runs = await app.start_runs("refunds", inputs)
        await app.work(until_idle=True)
        rows = await app.store.execute_raw("SELECT id FROM codara_reviews ORDER BY created_at")
        return runs, [str(r[0]) for r in rows]


class RealIds:
    """Hands out real run and review ids to every other case (each one once)."""

    def __init__(self, runs: list[str], reviews: list[str]) -> None:
        self.runs = iter(runs)
        self.reviews = iter(reviews)
        self.turn = itertools.count()

    def swap(self, params: dict[str, Any]) -> None:
        if next(self.turn) % 2:
            return
        for key, pool in (("run_id", self.runs), ("review_id", self.reviews)):
            if key in params:
                params[key] = next(pool, params[key])


def _positive(case: Any) -> bool:
    meta = case._meta  # schemathesis 4 has no public accessor for the generation mode
    return meta is None or meta.generation.mode is GenerationMode.POSITIVE


@pytest.fixture
def fuzz_env(
    seeded: Seeded, app_factory: Callable[..., codara.App]
) -> Iterator[tuple[Any, dict[str, str], RealIds]]:
    """The API on a seeded database, SQLite and PostgreSQL (the ``seeded`` fixture's params)."""
    runs, reviews = asyncio.run(_seed_runs(app_factory(seeded.url)))
    api = create_app(app_factory(seeded.url))
    headers = {"Authorization": f"Bearer {seeded.tokens['root']}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", api, config=CONFIG, headers=headers)
    try:
        yield schema, headers, RealIds(runs, reviews)
    finally:
        asgi.shutdown_lifespans()  # closes the app's store (schemathesis keeps it open)


@pytest.fixture
def api_schema(fuzz_env: tuple[Any, dict[str, str], RealIds]) -> Any:
    return fuzz_env[0]


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _lazy_schema_on_pytest_9(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's lazy loader reads ``node._nodeid``, which pytest 9.2 renamed."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@schema.parametrize()
@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_input_makes_the_api_fail(
    case: Any, fuzz_env: tuple[Any, dict[str, str], RealIds]
) -> None:
    _, headers, ids = fuzz_env
    if case.path_parameters and _positive(case):
        ids.swap(case.path_parameters)  # a negative case's invalid id stays invalid
    case.call_and_validate(headers=headers, checks=ALL_CHECKS)


def test_call_sequences_keep_the_contract(
    fuzz_env: tuple[Any, dict[str, str], RealIds],
) -> None:
    """Schemathesis's stateful phase: chains of calls along the inferred links, all checks."""
    schema, headers, _ = fuzz_env
    machine = schema.as_state_machine()
    assert schema.statistic.transitions.selected > 0  # links were inferred: sequences happen

    def with_token(self: Any, case: Any) -> dict[str, Any]:
        return {"headers": headers}

    signed_in = type("SignedInMachine", (machine,), {"get_call_kwargs": with_token})
    run_state_machine_as_test(
        signed_in,
        settings=settings(
            max_examples=20,
            stateful_step_count=5,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
