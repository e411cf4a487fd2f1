"""``codara gate check|promote|rollback|history`` and ``codara metric show``: is the
workflow ready, on what evidence, and who moved it between stages."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from codara.errors import ConfigError

from ._loader import open_app, options
from ._output import err_console, fmt_time, guard, out_console, print_json
from ._review import USER_ENV, acting_user

if TYPE_CHECKING:
    from rich.console import Console

    from codara.engine import App
    from codara.metrics import MetricDefinition, MetricReport

__all__ = ["EXIT_GATE_FAIL", "EXIT_GATE_NOT_ENOUGH", "gate_app", "metric_app"]

EXIT_GATE_FAIL = 30
"""`gate check` failed, or `gate promote` was refused on a failed check (codara.metrics)."""
EXIT_GATE_NOT_ENOUGH = 31
"""Not enough evidence yet (codara.metrics.EXIT_NOT_ENOUGH)."""

gate_app = typer.Typer(
    help="The gate from pilot to shadow to production: check the metric, promote, roll back.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
metric_app = typer.Typer(
    help="The business metric a workflow declares in codara.toml, and its recorded changes.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

WorkflowArg = Annotated[str, typer.Argument(help="The workflow's name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
VersionOpt = Annotated[
    str | None,
    typer.Option("--version", help="The workflow version (default: the latest registered)."),
]
UserOpt = Annotated[
    str | None,
    typer.Option(
        "--user", envvar=USER_ENV, show_envvar=True,
        help="Act as this user (must exist in codara_users; its roles apply).",
    ),
]  # fmt: skip
ByOpt = Annotated[
    str | None, typer.Option("--by", help="Who checks, for the record (default: the OS user).")
]


def _definition(app: App, workflow: str) -> MetricDefinition:
    from codara.metrics import load_metric

    settings = app.settings
    where = settings.source_file or "the configuration"
    definition = load_metric(settings.section("workflows"), workflow, where=where)
    if definition is None:
        raise ConfigError(
            f"workflow {workflow!r} declares no metric in {where}",
            hint=f"add [workflows.{workflow}.metric] (name, step, success, target, min_cases); "
            "see docs/metrics.md",
        )
    return definition


def _versions(
    app: App, workflow: str, version: str, definition: MetricDefinition
) -> dict[str, Any]:
    """What a promotion records it promoted: the workflow, its policies, the model its
    settings name, and the metric definition. Prompts live in the workflow's code, so its
    version stands for them."""
    from codara.review.policy import load_policies

    workflows = app.settings.section("workflows")
    policies = None
    if workflow in workflows:
        policies = load_policies(workflows, workflow=workflow).version
    llm = app.settings.section("llm")
    return {
        "workflow": version,
        "policies": policies,
        "prompts": f"in workflow version {version}",
        "model": llm.get("model"),
        "metric": definition.version,
    }


def _version(app: App, workflow: str, version: str | None) -> str:
    return version or app.latest(workflow).version


def _pct_or(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    if kind in ("metric", "share"):
        return f"{value:.2%}"
    return f"{value:.4g}"


def print_report(report: MetricReport, console: Console | None = None) -> None:
    """The check as a manager reads it: the verdict, the stage, the metric's definition,
    the evidence, each figure with its interval, and why."""
    from rich.table import Table
    from rich.text import Text

    data = report.as_dict()
    console = console or out_console()
    style = {"pass": "green", "fail": "red"}.get(report.outcome, "yellow")
    console.print(Text(f"{data['workflow']} version {data['workflow_version']}: ", style="bold")
                  + Text(report.outcome.upper(), style=f"bold {style}"))  # fmt: skip
    since = data.get("stage_since")
    console.print(f"stage: {data['stage']}" + (f" since {fmt_time(since)}" if since else ""))
    console.print(f"metric: {data['metric']} (definition {data['definition_version'][:12]}, "
                  f"recorded {fmt_time(data['definition_recorded_at'])} by "
                  f"{data['definition_recorded_by']}"
                  + (f", replacing {data['definition_previous'][:12]}"
                     if data.get("definition_previous") else "") + ")")  # fmt: skip
    console.print(f"evidence: {data['evidence']}, {data['cases']} case(s)")
    table = Table(show_lines=False)
    for column in ("figure", "limit", "estimate", "interval", "judged / cases", "verdict"):
        table.add_column(column)
    for fig in data["figures"]:
        interval = "-"
        if fig["low"] is not None:
            interval = f"[{_pct_or(fig['low'], fig['kind'])}, {_pct_or(fig['high'], fig['kind'])}]"
        estimate = _pct_or(fig["estimate"], fig["kind"])
        if fig["count"] is not None:
            estimate = f"{fig['count']} case(s)"
        colour = {"pass": "green", "fail": "red"}.get(fig["verdict"], "yellow")
        table.add_row(fig["name"], fig["limit"], estimate, interval,
                      f"{fig['judged']} / {fig['cases']}",
                      Text(fig["verdict"], style=colour))  # fmt: skip
    console.print(table)
    for fig in data["figures"]:
        console.print(Text(f"  {fig['name']}: {fig['reason']}", style="dim"))
    method = next((f["method"] for f in data["figures"] if f["method"]), None)
    if method:
        console.print(Text(f"intervals at {data['figures'][0]['confidence'] or 0.95:.0%}; "
                           "proportions: Wilson score (audited cases weighted by 1/their "
                           "sampling probability, Kish's effective n)", style="dim"))  # fmt: skip


def _exit_for(report: MetricReport) -> None:
    if report.outcome == "fail":
        raise typer.Exit(EXIT_GATE_FAIL)
    if report.outcome != "pass":
        raise typer.Exit(EXIT_GATE_NOT_ENOUGH)


@gate_app.command("check")
def check_command(
    ctx: typer.Context,
    workflow: WorkflowArg,
    version: VersionOpt = None,
    by: ByOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compute the metric and guardrails, with intervals, for the version in its current
    stage, and say pass, fail or not enough evidence. Exit 0 on pass, 30 on fail, 31 on
    not enough evidence (for CI)."""
    from codara.engine import operator_name
    from codara.metrics import check

    opts = options(ctx, json_out)

    async def body() -> MetricReport:
        async with open_app(opts, workflows=True) as app:
            definition = _definition(app, workflow)
            return await check(app.store, definition, version=_version(app, workflow, version),
                               actor=operator_name(by), now=app.clock())  # fmt: skip

    report = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json(report.as_dict())
    else:
        print_report(report)
    _exit_for(report)


@gate_app.command("promote")
def promote_command(
    ctx: typer.Context,
    workflow: WorkflowArg,
    to: Annotated[str, typer.Option("--to", help="shadow or production: one stage up.")],
    user: UserOpt = None,
    version: VersionOpt = None,
    override: Annotated[
        bool,
        typer.Option(
            "--override",
            help="Promote past a check that does not pass "
            "(admin role, with --reason; recorded as an override).",
        ),
    ] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the record.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Move the version one stage up when its check passes; record who, when, the evidence
    and the versions of workflow, policies, model and metric definition."""
    from codara.metrics import promote

    opts = options(ctx, json_out)

    async def body() -> dict[str, Any]:
        async with open_app(opts, workflows=True) as app:
            who = await acting_user(app, user, doing="a promotion records who made it")
            definition = _definition(app, workflow)
            v = _version(app, workflow, version)
            return await promote(
                app.store, definition, version=v, to=to, actor=who.username, roles=who.roles,
                reason=reason, override=override, versions=_versions(app, workflow, v, definition),
                now=app.clock(),
            )  # fmt: skip

    done = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json(done)
        return
    word = "overridden past the check" if done["action"] == "override" else "check passed"
    out_console().print(f"{workflow}: {done['from']} -> {done['to']} ({word}); recorded")


@gate_app.command("rollback")
def rollback_command(
    ctx: typer.Context,
    workflow: WorkflowArg,
    user: UserOpt = None,
    version: VersionOpt = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the record.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Move the version one stage down (production -> shadow -> pilot); recorded."""
    from codara.metrics import rollback

    opts = options(ctx, json_out)

    async def body() -> dict[str, Any]:
        async with open_app(opts, workflows=True) as app:
            who = await acting_user(app, user, doing="a promotion records who made it")
            definition = _definition(app, workflow)
            v = _version(app, workflow, version)
            return await rollback(app.store, workflow, version=v, actor=who.username,
                                  reason=reason, now=app.clock(),
                                  versions=_versions(app, workflow, v, definition))  # fmt: skip

    done = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json(done)
        return
    out_console().print(f"{workflow}: {done['from']} -> {done['to']} (rolled back); recorded")


@gate_app.command("history")
def history_command(ctx: typer.Context, workflow: WorkflowArg, json_out: JsonOpt = False) -> None:
    """Every promotion, override and rollback of the workflow, with who, when and why."""
    from rich.table import Table

    from codara.metrics import history

    opts = options(ctx, json_out)

    async def body() -> list[dict[str, Any]]:
        async with open_app(opts, workflows=False) as app:
            return await history(app.store, workflow)

    rows = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json(rows)
        return
    if not rows:
        err_console().print(f"{workflow} has never been promoted: every version is in pilot")
        return
    table = Table()
    for column in ("at", "version", "from -> to", "action", "by", "reason", "evidence"):
        table.add_column(column)
    for r in rows:
        outcome = r["evidence"].get("outcome", "-") if r["evidence"] else "-"
        table.add_row(fmt_time(r["at"]), r["workflow_version"], f"{r['from']} -> {r['to']}",
                      r["action"], r["actor"], r["reason"] or "", outcome)  # fmt: skip
    out_console().print(table)


@metric_app.command("show")
def metric_show_command(
    ctx: typer.Context, workflow: WorkflowArg, by: ByOpt = None, json_out: JsonOpt = False
) -> None:
    """The metric as codara.toml declares it, and every recorded change (who, when, the
    definition before)."""
    from codara.engine import operator_name
    from codara.metrics import record_definition

    opts = options(ctx, json_out)

    async def body() -> tuple[MetricDefinition, list[dict[str, Any]]]:
        async with open_app(opts, workflows=False) as app:
            definition = _definition(app, workflow)
            recorded = await record_definition(app.store, definition, operator_name(by),
                                               app.clock())  # fmt: skip
            return definition, recorded

    definition, recorded = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json({"current": definition.model_dump(mode="json"),
                    "version": definition.version, "history": recorded})  # fmt: skip
        return
    console = out_console()
    console.print(f"{definition.name} (version {definition.version[:12]})")
    console.print(json.dumps(definition.model_dump(mode="json", exclude={"workflow"}), indent=2))
    for r in recorded:
        was = f" (replacing {r['previous'][:12]})" if r["previous"] else ""
        console.print(f"recorded {fmt_time(r['recorded_at'])} by {r['recorded_by']}: "
                      f"{r['version'][:12]}{was}")  # fmt: skip
