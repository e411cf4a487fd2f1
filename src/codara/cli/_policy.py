"""``codara policy simulate``: what another policy set would have decided, before it is deployed.

The work is :func:`codara.review.simulate` (the API can call it too); this module parses the
options and prints: tables for people, ``--json`` for scripts. Only counts, run ids, step and
policy names: input values only with ``--show-inputs``, and then masked as journaled.

Nothing to simulate (no run of the workflow in the window, or none of its runs reached a
gate) is not an error: it says so and exits 0 (``"nothing_to_simulate": true`` in JSON).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ._loader import open_app, options
from ._output import err_console, guard, out_console, print_json

if TYPE_CHECKING:
    from rich.table import Table

    from codara.review import Simulation
    from codara.review._whatif_report import Precision, Tally

__all__ = ["policy_app"]

policy_app = typer.Typer(
    help="Review policies: try a changed policy set on the recorded decisions.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

SINCE_HELP = "Runs created since: 7d, 36h, 90m, 2w before now, or a date (2026-11-01, UTC)."


@policy_app.command("simulate", no_args_is_help=True)
def simulate_command(
    ctx: typer.Context,
    workflow: Annotated[str, typer.Argument(help="The workflow whose runs to look at.")],
    policies: Annotated[
        Path,
        typer.Option(
            "--policies",
            "-p",
            help="A codara.toml-shaped file with the [workflows.WORKFLOW] (and any "
            "[effects.NAME]) policies to try.",
            dir_okay=False,
        ),
    ],
    since: Annotated[str, typer.Option("--since", help=SINCE_HELP)] = "7d",
    step: Annotated[
        str | None,
        typer.Option("--step", help="Only this gate step (e.g. reply, or effect:refund)."),
    ] = None,
    label_field: Annotated[
        str,
        typer.Option(
            "--label-field",
            help="The proposal's field a reviewer's edit is judged by: changed = the "
            "proposal was wrong.",
        ),
    ] = "intent",
    first: Annotated[
        int, typer.Option("--first", min=0, max=10_000, help="List this many changed keys.")
    ] = 20,
    show_inputs: Annotated[
        bool,
        typer.Option(
            "--show-inputs", help="Show the changed decisions' inputs (masked, as journaled)."
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Re-evaluate the journaled policy decisions of WORKFLOW's runs under the policies of
    --policies, and report old and new outcomes, the transitions, the decisions that changed,
    those that cannot be re-evaluated (with the reason), and, where people decided reviews,
    the precision of automatic answers. Exit 0 with "nothing to simulate" when the window
    holds no decision."""
    import asyncio

    from codara.review import load_policy_file, parse_since, simulate

    opts = options(ctx, json_out)

    async def body() -> Simulation:
        now = time.time()
        start = parse_since(since, now)
        policy_set = load_policy_file(policies, workflow)
        async with open_app(opts, workflows=False) as app:
            return await simulate(
                app.store,
                workflow,
                policy_set,
                since=start,
                until=now,
                step=step,
                label_field=label_field,
                show_inputs=show_inputs,
                first=first,
            )

    sim = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json(sim.as_dict())
        return
    if sim.nothing_to_simulate:
        err_console().print(_nothing(sim))
        return
    _print(sim)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _nothing(sim: Simulation) -> str:
    window = f"since {_when(sim.since)}"
    if sim.runs == 0:
        return f"nothing to simulate: no run of {sim.workflow!r} was created {window}"
    what = f"step {sim.step!r}" if sim.step else "any gate step"
    seen = ", ".join(sorted(sim.steps) or sim.other_steps) or "none"
    out = f"nothing to simulate: {sim.runs} run(s) {window}, no decision of {what} to re-evaluate"
    out += f" (gate steps seen: {seen})"
    for reason, n in sim.left_out.items():
        out += f"; {n} left out: {reason}"
    return out


def _counts(sim: Simulation) -> Table:
    from rich.table import Table

    table = Table(title="Outcomes (old -> new)", title_justify="left")
    table.add_column("outcome")
    table.add_column("old", justify="right")
    table.add_column("new", justify="right")
    table.add_column("change", justify="right")

    def row(name: str, old: int, new: int) -> None:
        table.add_row(name, str(old), str(new), f"{new - old:+d}")

    row("allowed", sim.old.allowed, sim.new.allowed)
    for role in sorted(set(sim.old.asked) | set(sim.new.asked)):
        row(f"asked: {role}", sim.old.asked[role], sim.new.asked[role])
    row("denied", sim.old.denied, sim.new.denied)
    row("sampled for audit", sim.old.sampled, sim.new.sampled)
    return table


def _matrix(sim: Simulation) -> Table:
    from rich.table import Table

    olds = sorted({o for o, _ in sim.transitions})
    news = sorted({n for _, n in sim.transitions})
    table = Table(title="Transitions (rows: old, columns: new)", title_justify="left")
    table.add_column("old \\ new")
    for name in news:
        table.add_column(name, justify="right")
    for old in olds:
        table.add_row(old, *(str(sim.transitions.get((old, new), 0) or "") for new in news))
    return table


def _policies(old: Tally, new: Tally) -> Table:
    from rich.table import Table

    table = Table(title="Which policy decided", title_justify="left")
    table.add_column("policy")
    table.add_column("old", justify="right")
    table.add_column("new", justify="right")
    for name in sorted(set(old.by_policy) | set(new.by_policy)):
        table.add_row(name, str(old.by_policy[name]), str(new.by_policy[name]))
    return table


def _precision(name: str, p: Precision) -> str:
    iv = p.interval()
    if iv is None:
        return f"  {name}: {p.automatic} automatic answer(s), none labelled"
    sources = f"{p.from_review} from reviews, {p.from_audit} from audits"
    line = (
        f"  {name}: {p.correct}/{p.labelled} labelled automatic answers correct, "
        f"{iv.point:.1%} (95% Wilson {iv.low:.1%} to {iv.high:.1%}); {p.labelled} of "
        f"{p.automatic} automatic answers labelled ({sources})"
    )
    audit = p.audit_interval()
    if audit is not None and p.from_review:  # the random sample alone, when there is a mix
        line += (
            f"; audits alone {p.correct_audit}/{p.from_audit}, {audit.point:.1%} "
            f"({audit.low:.1%} to {audit.high:.1%})"
        )
    return line


def _print(sim: Simulation) -> None:
    out = out_console()
    versions = ", ".join(f"{k} {v[:12]}" for k, v in sim.versions.items())
    out.print(
        f"{sim.workflow}: {sim.compared} decision(s) of {sim.runs} run(s) since "
        f"{_when(sim.since)} re-evaluated under {sim.policies_file} ({versions})"
    )
    out.print(_counts(sim))
    out.print(_matrix(sim))
    out.print(_policies(sim.old, sim.new))
    shown = f", the first {len(sim.changes)}" if sim.changes else ""
    out.print(f"changed: {sim.changed} decision(s){shown}")
    for change in sim.changes:
        d = change.as_dict()
        line = f"  {d['key']}: {d['old']} -> {d['new']} (by {d['new_policy'] or 'no policy'})"
        if change.inputs is not None:
            line += f" inputs {dict(change.inputs)}"
        out.print(line, markup=False, highlight=False)
    skipped = sum(sim.skipped.values())
    out.print(f"not re-evaluated: {skipped} decision(s)")
    for reason, n in sim.skipped.most_common():
        out.print(f"  {n}: {reason}", markup=False, highlight=False)
    for key, _ in sim.skipped_keys:
        out.print(f"    {key}", markup=False, highlight=False)
    for reason, n in sim.left_out.most_common():
        out.print(f"left out: {n} decision(s): {reason}", markup=False, highlight=False)
    out.print(
        f"labels (field {sim.label_field!r}): exist only where people decided a review or an "
        f"audit: {sim.labelled} of {sim.compared} decision(s)"
    )
    out.print(_precision("old policies", sim.old_precision), markup=False)
    out.print(_precision("new policies", sim.new_precision), markup=False)
