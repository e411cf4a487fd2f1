"""The reference workload as a Codara app.

``app`` is what `codara worker` and `codara run` load (see ``[app] module`` in codara.toml).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import codara
from codara.config import Settings, load_settings
from codara.review import ReviewGate, install_reviews

from .crm import CRM
from .model import TriageModel
from .settings import TriageSettings, triage_settings
from .workflow import register

CONFIG = Path(__file__).with_name("codara.toml")


@dataclass
class Workload:
    app: codara.App
    model: TriageModel
    crm: CRM
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
    crm = CRM(triage.crm_path)
    gate = ReviewGate.from_settings(settings, "triage")
    register(app, model, crm, gate, sensitive=frozenset(triage.sensitive_intents))
    install_reviews(app)
    return Workload(app, model, crm, triage)


_workload = build()
app = _workload.app
