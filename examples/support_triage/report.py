"""The metric report: what the triage did, how well, and how fast."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

import codara


@dataclass
class SourceReads:
    batches: int = 0
    seen: int = 0
    accepted: int = 0
    quarantined: int = 0
    stale: int = 0
    """Batches older than the source's max_age (read and flagged)."""


REFUND = "payments.refund"


@dataclass
class RefundReport:
    """What became of the refunds (the ``payments.refund`` effect), from the journal and
    the review queue, and the payments service's own ledger as an independent check."""

    executed: int = 0
    reconciled: int = 0
    """Found made at the service after an unknown outcome (its reconcile), not made again."""
    shadow: int = 0
    held_for_review: int = 0
    """Refunds a policy sent to a person (finance), decided or not."""
    awaiting_review: int = 0
    denied_by_policy: int = 0
    rejected_by_reviewer: int = 0
    refused_by_service: int = 0
    failed: int = 0
    """Outcome still unknown when the retries ran out (the run failed)."""
    compensated: int = 0
    """Made, then cancelled because the run failed afterwards."""
    cents: Counter[str] = field(default_factory=Counter)
    """Refunded (executed or reconciled), per currency, by the journal."""
    ledger: dict[str, Any] | None = None
    """The payments service's totals (``GET /ledger``): refunded, cancelled, cents."""

    @property
    def made(self) -> int:
        """Refunds that should stand in the service's ledger."""
        return self.executed + self.reconciled - self.compensated

    @property
    def ledger_agrees(self) -> bool | None:
        if self.ledger is None:
            return None
        return (
            int(self.ledger.get("refunded", 0)) == self.made
            and int(self.ledger.get("cancelled", 0)) == self.compensated
        )

    def as_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in vars(self).items() if k != "cents"},
                "cents": dict(self.cents), "ledger_agrees": self.ledger_agrees}  # fmt: skip


@dataclass
class DataReport:
    """What the workflows read, from the journal's lineage, and what went to quarantine."""

    reads: dict[str, SourceReads] = field(default_factory=dict)
    quarantine: list[tuple[str, str, int, int]] = field(default_factory=list)
    """(source, rule, records, distinct records)."""
    intake: dict[str, Any] | None = None
    effects: dict[str, Counter[str]] = field(default_factory=dict)
    """effect -> how its operations ended: executed, reconciled, shadow, denied (by a
    policy or a reviewer), refused (by the system it calls), failed, compensated (from the
    journal)."""
    refunds: RefundReport = field(default_factory=RefundReport)

    def as_dict(self) -> dict[str, Any]:
        return {
            "effects": {name: dict(c) for name, c in sorted(self.effects.items())},
            "refunds": self.refunds.as_dict(),
            "reads": {name: vars(r) for name, r in sorted(self.reads.items())},
            "quarantined": [
                {"source": s, "rule": r, "records": n, "distinct": d}
                for s, r, n, d in self.quarantine
            ],
            "intake": self.intake,
        }


async def data_report(app: codara.App) -> DataReport:
    report = DataReport()
    rows = await app.store.execute_raw(
        "SELECT output FROM codara_journal WHERE kind = 'read' AND status = 'ok'"
    )
    for (output,) in rows:
        lineage = json.loads(output)["lineage"]
        reads = report.reads.setdefault(str(lineage["source"]), SourceReads())
        reads.batches += 1
        reads.seen += int(lineage["seen"])
        reads.accepted += int(lineage["accepted"])
        reads.quarantined += int(lineage["quarantined"])
        reads.stale += bool(lineage["stale"])
    report.quarantine = [
        (str(s), str(r), int(n), int(d))
        for s, r, n, d in await app.store.execute_raw(
            "SELECT source, rule, COUNT(*), COUNT(DISTINCT record) FROM codara_quarantine "
            "GROUP BY source, rule ORDER BY source, rule"
        )
    ]
    for run in await app.store.list_runs(workflow="intake", limit=1000):
        if run.output is not None:
            report.intake = json.loads(run.output)
            break
    for kind, name, status, output, error in await app.store.execute_raw(
        "SELECT kind, name, status, output, error FROM codara_journal "
        "WHERE kind IN ('effect', 'compensate') AND status <> 'claimed'"
    ):
        if status != "ok":  # denied by a policy or a reviewer, refused, or failed
            failure = json.loads(error or "{}")
            outcome = failure.get("outcome")
            how = outcome if outcome in ("denied", "refused") else "failed"
        else:
            how = "compensated" if kind == "compensate" else str(json.loads(output)["via"])
        report.effects.setdefault(str(name), Counter())[how] += 1
        if name == REFUND:
            _count_refund(report.refunds, how, output, error)
    for status, n in await app.store.execute_raw(
        "SELECT status, COUNT(*) FROM codara_reviews WHERE step = ? GROUP BY status",
        (f"effect:{REFUND}",),
    ):
        report.refunds.held_for_review += int(n)
        report.refunds.awaiting_review += int(n) if status == "pending" else 0
    return report


def _count_refund(refunds: RefundReport, how: str, output: str | None, error: str | None) -> None:
    if how == "denied":  # the gate's reason says who: "denied (POLICY)" or "rejected (...)"
        message = str(json.loads(error or "{}").get("message", ""))
        if "was denied: rejected" in message:
            refunds.rejected_by_reviewer += 1
        else:
            refunds.denied_by_policy += 1
    elif how == "refused":
        refunds.refused_by_service += 1
    elif how in ("executed", "reconciled", "shadow", "compensated", "failed"):
        setattr(refunds, how, getattr(refunds, how) + 1)
    if how in ("executed", "reconciled"):
        result = json.loads(output or "{}")["result"]
        refunds.cents[str(result["currency"])] += int(result["amount_cents"])


@dataclass
class TriageReport:
    processed: int = 0
    failed: int = 0
    unfinished: int = 0
    auto: int = 0
    auto_labelled: int = 0
    auto_correct: int = 0
    labelled: int = 0
    correct: int = 0
    human: int = 0
    human_reasons: Counter[str] = field(default_factory=Counter)
    wrong_auto: Counter[tuple[str, str]] = field(default_factory=Counter)
    errors_by_intent: Counter[str] = field(default_factory=Counter)
    reviewed: int = 0
    reviewed_correct: int = 0
    waiting_review: int = 0
    review_outcomes: Counter[str] = field(default_factory=Counter)
    reviews_by_role: Counter[str] = field(default_factory=Counter)
    decision_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0
    example_auto: str | None = None
    example_human: str | None = None
    example_reviewed: str | None = None
    quarantined_runs: int = 0
    """Triage runs that found the ticket's data unusable (an unknown customer)."""
    stale_decisions: int = 0
    """Finished tickets whose decision used a record older than its source's max_age."""
    data: DataReport | None = None

    @property
    def automation_rate(self) -> float:
        return self.auto / self.processed if self.processed else 0.0

    @property
    def auto_precision(self) -> float | None:
        return self.auto_correct / self.auto_labelled if self.auto_labelled else None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def sent_precision(self) -> float | None:
        sent = self.auto_labelled + self.reviewed
        return (self.auto_correct + self.reviewed_correct) / sent if sent else None

    @property
    def median_decision_seconds(self) -> float | None:
        if not self.decision_seconds:
            return None
        ordered = sorted(self.decision_seconds)
        return ordered[len(ordered) // 2]

    @property
    def throughput(self) -> float:
        return self.processed / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "tickets_processed": self.processed,
            "runs_failed": self.failed,
            "runs_unfinished": self.unfinished,
            "automatic_answers": self.auto,
            "sent_to_people": self.human,
            "automation_rate": round(self.automation_rate, 4),
            "precision_of_automatic_answers": _round(self.auto_precision),
            "classifier_accuracy": _round(self.accuracy),
            "throughput_tickets_per_s": round(self.throughput, 1),
            "seconds": round(self.seconds, 2),
            "human_reasons": dict(self.human_reasons),
            "awaiting_review": self.waiting_review,
            "reviews_by_role": dict(self.reviews_by_role),
            "review_outcomes": dict(self.review_outcomes),
            "precision_of_all_sent_answers": _round(self.sent_precision),
            "median_seconds_to_decision": self.median_decision_seconds,
            "tickets_quarantined_by_triage": self.quarantined_runs,
            "decisions_on_stale_data": self.stale_decisions,
            "data": self.data.as_dict() if self.data is not None else None,
            "wrong_automatic_answers": [
                {"true": t, "predicted": p, "count": n}
                for (t, p), n in self.wrong_auto.most_common()
            ],
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


async def build_report(app: codara.App, *, seconds: float) -> TriageReport:
    report = TriageReport(seconds=seconds)
    for run in await app.store.list_runs(workflow="triage", limit=1_000_000):
        if run.status == "failed":
            report.failed += 1
            continue
        if run.status == "waiting":
            report.waiting_review += 1
            continue
        if run.status != "completed" or run.output is None:
            report.unfinished += 1
            continue
        ticket = json.loads(run.input)
        out = json.loads(run.output)
        if out["action"] == "quarantined":
            report.quarantined_runs += 1
            continue
        label = ticket.get("label") or ticket.get("category")
        report.processed += 1
        report.stale_decisions += bool(out.get("stale_data"))
        if label is not None:
            report.labelled += 1
            if out.get("predicted", out["intent"]) == label:
                report.correct += 1
            else:
                report.errors_by_intent[label] += 1
        if out["action"] == "auto_reply":
            report.auto += 1
            report.example_auto = report.example_auto or run.id
            if label is not None:
                report.auto_labelled += 1
                if out["intent"] == label:
                    report.auto_correct += 1
                else:
                    report.wrong_auto[(label, out["intent"])] += 1
        else:
            report.human += 1
            report.review_outcomes[out["policy_outcome"]] += 1
            if out["action"] == "reviewed_reply":
                report.example_reviewed = report.example_reviewed or run.id
                if label is not None:
                    report.reviewed += 1
                    report.reviewed_correct += out["intent"] == label
            else:
                report.example_human = report.example_human or run.id
            report.human_reasons[out["reason"]] += 1
    report.data = await data_report(app)
    return report


def print_data(report: TriageReport, data: DataReport, console: Console) -> None:
    reads = Table(title="Data read through governed sources (from the journal's lineage)")
    for column in ("source", "batches", "records seen", "accepted", "quarantined", "stale"):
        reads.add_column(column, justify="left" if column == "source" else "right")
    for name, r in sorted(data.reads.items()):
        reads.add_row(name, f"{r.batches:,}", f"{r.seen:,}", f"{r.accepted:,}",
                      f"{r.quarantined:,}", f"{r.stale:,}")  # fmt: skip
    console.print(reads)
    if data.intake:
        i = data.intake
        console.print(
            f"inbox: {i['accepted'] + i['quarantined_by_source']:,} rows = {i['runs']:,} "
            f"tickets triaged + {i['duplicates']:,} duplicate ids + "
            f"{i['quarantined_by_source']:,} refused by the source; "
            f"{report.quarantined_runs:,} triaged tickets had no customer in the CRM; "
            f"{report.stale_decisions:,} decisions used a stale customer record"
        )
    if data.effects:
        done = Table(title="Effects on the CRM and the payments service (ctx.effect; journal)")
        hows = ("executed", "reconciled", "shadow", "denied", "refused", "failed",
                "compensated")  # fmt: skip
        names = sorted(data.effects)
        done.add_column("outcome")
        for name in names:
            done.add_column(name, justify="right")
        for how in hows:
            done.add_row(how, *(f"{data.effects[n][how]:,}" for n in names))
        console.print(done)
        console.print(f"held for review (no effect yet): {report.waiting_review:,} tickets")
    print_refunds(data.refunds, console)
    if data.quarantine:
        table = Table(title="Quarantined, by source and reason (`codara quarantine list`)")
        for column in ("source", "rule", "records", "distinct"):
            table.add_column(column, justify="left" if column in ("source", "rule") else "right")
        for source, rule, n, distinct in data.quarantine:
            table.add_row(source, rule, f"{n:,}", f"{distinct:,}")
        console.print(table)


def print_refunds(r: RefundReport, console: Console) -> None:
    if not (r.held_for_review or r.executed or r.reconciled or r.shadow or r.denied_by_policy
            or r.rejected_by_reviewer or r.refused_by_service or r.failed):  # fmt: skip
        return
    table = Table(title="Refunds (payments.refund; the journal, the reviews, the ledger)",
                  show_header=False)  # fmt: skip
    table.add_column("what")
    table.add_column("refunds", justify="right")
    for what, n in (
        ("executed", r.executed),
        ("reconciled (made, found after a failure)", r.reconciled),
        ("shadow (recorded, not made)", r.shadow),
        ("held for review by finance", r.held_for_review),
        ("  of which still waiting", r.awaiting_review),
        ("denied by policy", r.denied_by_policy),
        ("rejected by a reviewer", r.rejected_by_reviewer),
        ("refused by the payments service", r.refused_by_service),
        ("failed (outcome unknown)", r.failed),
        ("compensated (cancelled: the run failed)", r.compensated),
    ):
        table.add_row(what, f"{n:,}")
    table.add_row("amount refunded", _money(r.cents))
    if r.ledger is not None:
        ledger = r.ledger
        table.add_row("the service's ledger: refunds standing", f"{ledger['refunded']:,}")
        table.add_row("  amount", _money(ledger["cents"]))
        table.add_row("  cancelled", f"{ledger['cancelled']:,}")
        agrees = "yes" if r.ledger_agrees else "[bold red]NO[/bold red]"
        table.add_row("ledger agrees with the journal", agrees)
    console.print(table)


def _money(cents: Mapping[str, int]) -> str:
    return ", ".join(f"{c / 100:,.2f} {cur}" for cur, c in sorted(cents.items())) or "-"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def print_report(report: TriageReport, console: Console, *, config_hint: str) -> None:
    table = Table(title="Support inbox triage: the metric report", show_header=False)
    table.add_column("measure", style="bold")
    table.add_column("value", justify="right")
    table.add_row("tickets processed", f"{report.processed:,}")
    table.add_row("answered automatically", f"{report.auto:,} ({_pct(report.automation_rate)})")
    table.add_row("precision of automatic answers", _pct(report.auto_precision))
    table.add_row("decided by people", f"{report.human:,}")
    for reason, n in sorted(report.human_reasons.items()):
        table.add_row(f"  because: {reason}", f"{n:,}")
    for outcome, n in sorted(report.review_outcomes.items()):
        table.add_row(f"  review outcome: {outcome}", f"{n:,}")
    table.add_row("waiting for review now", f"{report.waiting_review:,}")
    table.add_row("precision of all answers sent", _pct(report.sent_precision))
    if report.median_decision_seconds is not None:
        table.add_row("median time to a decision", f"{report.median_decision_seconds:.1f} s")
    table.add_row("model accuracy (all tickets)", _pct(report.accuracy))
    table.add_row("runs failed / unfinished", f"{report.failed} / {report.unfinished}")
    table.add_row("throughput", f"{report.throughput:,.0f} tickets/s ({report.seconds:.1f} s)")
    console.print(table)

    if report.wrong_auto:
        wrong = Table(title="Wrong automatic answers (true intent -> answered as)")
        wrong.add_column("true intent")
        wrong.add_column("answered as")
        wrong.add_column("count", justify="right")
        for (true, pred), n in report.wrong_auto.most_common(8):
            wrong.add_row(true, pred, str(n))
        console.print(wrong)
    if report.errors_by_intent:
        errs = Table(title="Classifier errors by true intent (top 8)")
        errs.add_column("intent")
        errs.add_column("errors", justify="right")
        for intent, n in report.errors_by_intent.most_common(8):
            errs.add_row(intent, str(n))
        console.print(errs)
    if report.data is not None:
        print_data(report, report.data, console)
    console.print("\n[bold]Inspect a run[/bold] (its steps, inputs, outputs and timings):")
    for what, run_id in (
        ("answered", report.example_auto),
        ("reviewed", report.example_reviewed),
        ("handed over", report.example_human),
    ):
        if run_id:
            console.print(
                f"  {what:>17}: codara --config {config_hint} runs show {run_id}", soft_wrap=True
            )
    for what, command in (("all runs", "runs list"), ("audit trail", "audit verify")):
        console.print(f"  {what:>17}: codara --config {config_hint} {command}", soft_wrap=True)
