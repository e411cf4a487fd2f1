from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import codara
from codara.engine import RetryPolicy
from codara.testing._clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def app(db_url: str) -> AsyncIterator[codara.App]:
    """An open app on a fresh database, with fast retries."""
    a = codara.App(db_url, durability="os", retry=RetryPolicy(initial_delay=0.001))
    async with a:
        yield a
