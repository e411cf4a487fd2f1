"""The reference workload as a Codara app.

``app`` is what `codara worker` and `codara run` load (see ``[app] module`` in codara.toml).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import codara
from codara.config import Settings, load_settings
from codara.errors import ConfigError
from codara.review import ReviewGate, install_reviews

from .crm import CRM
from .model import TriageModel
from .payments import Payments
from .settings import TriageSettings, triage_settings
from .workflow import register

CONFIG = Path(__file__).with_name("codara.toml")


@dataclass
class Workload:
    app: codara.App
    model: TriageModel
    crm: CRM
    payments: Payments
    """The payments service's client; its ``url`` may be set after the build (the demo
    starts the service first)."""
    settings: TriageSettings


def build(settings: Settings | None = None, **overrides: object) -> Workload:
    """The app, its model and its CRM, from ``settings`` (default: this folder's codara.toml,
    or the file named by CODARA_CONFIG)."""
    if settings is None:
        settings = load_settings(os.environ.get("CODARA_CONFIG") or CONFIG)
    triage = triage_settings(settings)
    if overrides:
        triage = triage.model_copy(update=overrides)
    app = codara.App(settings=settings)
    model = TriageModel(triage, settings.embedding)
    crm = CRM(crm_url(settings))
    payments = Payments(triage.payments_url)
    gate = ReviewGate.from_settings(settings, "triage")
    register(app, model, crm, payments, gate, sensitive=frozenset(triage.sensitive_intents))
    install_reviews(app)
    return Workload(app, model, crm, payments, triage)


def crm_url(settings: Settings) -> str:
    """The CRM database's URL: the ``crm`` source's (``url``, or the variable ``url_env``
    names). The replies and the human queue are written there too."""
    table = settings.section("sources").get("crm")
    if not isinstance(table, dict):
        raise ConfigError(
            f"{settings.source_file}: the triage reads the CRM through [sources.crm], "
            "which is not declared",
            hint="see examples/support_triage/codara.toml",
        )
    if table.get("url_env"):
        name = str(table["url_env"])
        if not os.environ.get(name):
            raise ConfigError(
                f"[sources.crm] url_env: environment variable {name} is not set",
                hint=f"export {name}=<the CRM database URL>",
            )
        return os.environ[name]
    return str(table.get("url", ""))


def load(
    path: str | Path = CONFIG,
    *,
    crm_url: str | None = None,
    inbox: Path | None = None,
    overrides: dict[str, dict[str, object]] | None = None,
) -> Settings:
    """The workload's settings from ``path``; with ``crm_url``, the CRM (sources ``crm``
    and ``payments``) is that database instead of the file's; with ``inbox``, the inbox
    source reads that folder."""
    settings = load_settings(path, overrides=overrides)
    if crm_url is None and inbox is None:
        return settings
    sources = {name: dict(table) for name, table in settings.section("sources").items()}
    for name in ("crm", "payments") if crm_url is not None else ():
        sources[name].pop("url_env", None)
        sources[name]["url"] = crm_url
    if inbox is not None:
        sources["inbox"]["root"] = str(inbox)
    return load_settings(path, overrides={**(overrides or {}), "sources": sources})


def inbox_root(settings: Settings) -> Path:
    """Where the inbox source reads its files (``[sources.inbox] root``)."""
    return Path(str(settings.section("sources")["inbox"]["root"]))


_workload = build()
app = _workload.app
