"""What the workload's tests share: the payments service the refunds go to, on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from examples.support_triage.payments import PaymentsService, start_for


@pytest.fixture
def payments_service(tmp_path: Path) -> Iterator[Callable[[str], PaymentsService]]:
    """Start a payments service whose charges are the CRM's at the URL given; each is
    stopped when the test ends."""
    started: list[PaymentsService] = []

    def start(crm_url: str) -> PaymentsService:
        service = start_for(crm_url, tmp_path / f"payments-{len(started)}.db")
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
