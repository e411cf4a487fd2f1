"""The rules each record of the workload's sources must satisfy (``record_model`` in
codara.toml). A record that breaks one is quarantined with the rule and the reason, never
dropped: see `codara quarantine list`.

The checks use kept libraries, not hand-written ones: ``stdnum`` validates IBANs (mod 97)
and card numbers (Luhn).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from stdnum import iban as _iban
from stdnum import luhn as _luhn

MAX_TEXT = 5000
"""The longest ticket text the triage takes; a longer one is quarantined (schema.text)."""


class InboxTicket(BaseModel):
    """One row of the inbox files."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.:-]+$")
    customer_id: int = Field(ge=1)
    received_at: dt.datetime
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    label: str | None = None
    """The dataset's intent (BANKING77): the reviewers' truth the report measures against."""

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the message is blank")
        return value

    @field_validator("label", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value


class Customer(BaseModel):
    """A row of the CRM's customers table."""

    id: int = Field(ge=1)
    name: str = Field(min_length=1, max_length=200)
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=320)
    iban: str
    tier: Literal["standard", "premium", "business"]
    country: str = Field(pattern=r"^[A-Z]{2}$")
    updated_at: dt.datetime

    @field_validator("iban")
    @classmethod
    def _valid_iban(cls, value: str) -> str:
        if not _iban.is_valid(value):
            raise ValueError("not a valid IBAN (its mod-97 check fails)")
        return value


class Transaction(BaseModel):
    """A recent card transaction: a row of transactions joined with its card."""

    id: int = Field(ge=1)
    customer_id: int = Field(ge=1)
    card_id: int = Field(ge=1)
    pan: str
    amount_cents: int
    currency: Literal["EUR", "GBP", "USD"]
    merchant: str = Field(min_length=1, max_length=200)
    status: Literal["settled", "pending", "declined", "refunded"]
    at: dt.datetime

    @field_validator("pan")
    @classmethod
    def _valid_card(cls, value: str) -> str:
        if not _luhn.is_valid(value.replace(" ", "")):
            raise ValueError("not a valid card number (its Luhn check fails)")
        return value
