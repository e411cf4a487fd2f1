"""How well the triage answers by itself, measured on labelled tickets it never learned from.

``python -m examples.support_triage.quality`` fits the model as the demo does (from the disk
cache when the data has not changed), then prints

* on the **tuning** part (the examples that set the threshold), for candidate lines of the
  ``sensitive_mass`` policy, how many tickets would be answered automatically and how many
  truly sensitive ones among them: the line in codara.toml is chosen from this table;
* on the **check** part (the demo's inbox: neither fitted nor tuned on), what the
  workload's real policies do: the share answered automatically, the precision of those
  answers with its Wilson interval, and the truly sensitive tickets answered automatically.

A ticket is answered automatically when no review policy fires (the audit sample, taken
after the fact at random, is not a judgement on the ticket). Nothing is tuned on the check
part; ``tests/workload/test_quality.py`` asserts the targets on it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from codara.config import Settings, load_settings
from codara.metrics import Interval, wilson
from codara.review.policy import WorkflowPolicies, load_policies

from .app import CONFIG
from .data import Example, Split, load_examples, split
from .model import Intent, TriageModel
from .settings import TriageSettings, triage_settings

ROOT = Path(__file__).parents[2]
CANDIDATE_LINES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)


@dataclass(frozen=True)
class Quality:
    """What the policies did with a labelled part."""

    tickets: int
    automated: int
    correct: int
    """Automatic answers whose intent is the ticket's label."""
    sensitive_automated: int
    """Tickets whose label is a sensitive intent, answered automatically."""

    @property
    def automation(self) -> float:
        return self.automated / self.tickets if self.tickets else 0.0

    @property
    def precision(self) -> Interval:
        return wilson(self.correct, self.automated)

    def describe(self) -> str:
        p = self.precision
        return (
            f"{self.automated} of {self.tickets} answered automatically "
            f"({self.automation:.1%}), precision {p.point:.2%} "
            f"(95% Wilson [{p.low:.2%}, {p.high:.2%}]), "
            f"{self.sensitive_automated} truly sensitive answered automatically"
        )


def prepared(settings: Settings | None = None) -> tuple[TriageModel, Split]:
    """The workload's model, fitted (or loaded from its cache) on the demo's split; a
    relative ``cache_dir`` is under the repository, where ``make demo`` keeps it."""
    settings = settings if settings is not None else load_settings(CONFIG)
    cfg: TriageSettings = triage_settings(settings)
    if not cfg.cache_dir.is_absolute():
        cfg = cfg.model_copy(update={"cache_dir": ROOT / cfg.cache_dir})
    parts = split(
        load_examples(),
        inbox_size=cfg.inbox_size,
        fit_per_intent=cfg.fit_per_intent,
        tune_per_intent=cfg.tune_per_intent,
        seed=cfg.seed,
    )
    model = TriageModel(cfg, settings.embedding)
    model.prepare(parts)
    return model, parts


def intents(model: TriageModel, examples: Sequence[Example]) -> list[Intent]:
    """The model's intent for each example, as ``classify`` journals it."""
    vectors = model.embedder.embed_cached([e.text for e in examples], model.settings.cache_dir)
    return [model.intent(p, mass) for p, mass in model.score_embeddings(vectors)]


def measure(
    model: TriageModel,
    examples: Sequence[Example],
    policies: WorkflowPolicies,
) -> Quality:
    """Apply the real review policies to each example's intent, on clean, fresh data."""
    sensitive = frozenset(model.settings.sensitive_intents)
    automated = correct = sensitive_automated = 0
    for i, (intent, example) in enumerate(zip(intents(model, examples), examples, strict=True)):
        values = {**intent.policy_inputs(sensitive), "data": {"stale": False, "quarantined": 0}}
        decision = policies.evaluate(values, decision_key=f"quality:{i}")
        if decision.policy is None:  # no policy fired (an audit sample is taken at random)
            automated += 1
            correct += intent.label == example.label
            sensitive_automated += example.label in sensitive
    return Quality(len(examples), automated, correct, sensitive_automated)


def line_table(model: TriageModel, examples: Sequence[Example]) -> list[tuple[float, Quality]]:
    """On ``examples`` (the tuning part), what each candidate line of ``sensitive_mass``
    would automate, with the other triage policies (sensitive top intent, threshold)."""
    sensitive = frozenset(model.settings.sensitive_intents)
    scored = list(zip(intents(model, examples), examples, strict=True))
    rows = []
    for line in CANDIDATE_LINES:
        auto = [
            (i, e)
            for i, e in scored
            if i.label not in sensitive and i.sensitive_mass < line and i.confidence >= i.threshold
        ]
        rows.append(
            (
                line,
                Quality(
                    tickets=len(examples),
                    automated=len(auto),
                    correct=sum(i.label == e.label for i, e in auto),
                    sensitive_automated=sum(e.label in sensitive for _, e in auto),
                ),
            )
        )
    return rows


def triage_policies(path: Path = CONFIG) -> WorkflowPolicies:
    import tomllib

    return load_policies(tomllib.loads(path.read_text(encoding="utf-8")), workflow="triage")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.support_triage.quality")
    parser.add_argument("--config", type=Path, default=CONFIG, help="codara.toml to use")
    args = parser.parse_args(argv)
    model, parts = prepared(load_settings(args.config))
    print(f"model: {model.describe()}; fitted on {len(parts.fit)}, tuned on {len(parts.tune)}")
    print("tuning part, by line of sensitive_mass:")
    for line, quality in line_table(model, parts.tune):
        print(f"  {line:>5}: {quality.describe()}")
    print(f"check part ({len(parts.inbox)} inbox tickets), the policies of {args.config.name}:")
    print(f"  {measure(model, parts.inbox, triage_policies(args.config)).describe()}")


if __name__ == "__main__":
    main()
