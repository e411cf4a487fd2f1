"""The reference workload's own settings: the `[triage]` table of its codara.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from codara.config import Settings
from codara.errors import ConfigError

# Card-security and fraud intents always go to a person, however confident the model is.
DEFAULT_SENSITIVE = (
    "compromised_card",
    "lost_or_stolen_card",
    "lost_or_stolen_phone",
    "card_payment_not_recognised",
    "cash_withdrawal_not_recognised",
    "direct_debit_payment_not_recognised",
)


class TriageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    inbox_size: int = Field(default=2000, ge=1, le=9000)
    fit_per_intent: int | Literal["all"] = "all"
    """Labelled examples per intent the classifier learns from: "all" is every one that is
    neither in the inbox nor in the tuning part."""
    tune_per_intent: int = Field(default=20, ge=5, le=100)
    target_precision: float = Field(default=0.985, gt=0.5, le=1.0)
    """What the auto-answer threshold must show on the tuning part: the lower end of the
    Wilson interval (at ``threshold_confidence``) of the automatic answers' precision."""
    threshold_confidence: float = Field(default=0.95, ge=0.5, lt=1.0)
    sensitive_intents: tuple[str, ...] = DEFAULT_SENSITIVE
    cache_dir: Path = Path(".cache/codara")
    seed: int = 77
    payments_url: str | None = None
    """The payments service the refunds go to; unset, the demo starts its own on loopback
    (``codara worker`` processes need it set)."""
    payments_ledger: Path = Path("demo-out/payments.db")
    """The ledger of the payments service the demo starts (recreated on each demo)."""

    @field_validator("fit_per_intent", mode="before")
    @classmethod
    def _all_or_a_count(cls, value: Any) -> Any:
        if value == "all" or (type(value) is int and value >= 5):
            return value
        raise ValueError(f'must be "all" or a whole number of at least 5, not {value!r}')


def triage_settings(settings: Settings) -> TriageSettings:
    try:
        return TriageSettings.model_validate(dict(settings.section("triage")))
    except ValidationError as exc:
        problems = "; ".join(
            f"triage.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(
            f"invalid [triage] settings in {settings.source_file}: {problems}",
            hint="see examples/support_triage/README.md for the keys",
        ) from exc
