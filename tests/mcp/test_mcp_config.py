"""``[mcp.NAME]`` is checked when the app loads it: each mistake is one ConfigError naming the
file, the table and the key, and nothing is started. Effect tools are effects from then on,
policed by ``[effects."mcp.SERVER.TOOL"]`` like any other (a denial starts no server)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.mcp.conftest import ToolServer, stdio_table, write_config

import codara
from codara.engine import EffectFailedError
from codara.errors import ConfigError
from codara.review import install_reviews

GOOD = '[mcp.crm]\ncommand = "crm-mcp"\ntools = { lookup = "read", refund = "effect" }\n'


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('tools = { a = "read" }', "give either command (a server started over stdio) or url"),
        (
            'command = "x"\nurl = "http://127.0.0.1/mcp"\ntools = { a = "read" }',
            "give either command",
        ),
        (
            'command = "x"\nenv = ["TOKEN=abc"]\ntools = { a = "read" }',
            "env: entry 1 is not an environment variable name: env lists names",
        ),
        (
            'url = "http://127.0.0.1/mcp"\nheaders = { Authorization = "Bearer abc" }\n'
            'tools = { a = "read" }',
            "headers.Authorization must name the environment variable that holds its value",
        ),
        (
            'url = "http://u:pw@127.0.0.1/mcp"\ntools = { a = "read" }',
            "url: url must not hold credentials or a query string",
        ),
        (
            'url = "http://127.0.0.1/mcp?key=1"\ntools = { a = "read" }',
            "url: url must not hold credentials or a query string",
        ),
        (
            'url = "ftp://127.0.0.1/mcp"\ntools = { a = "read" }',
            "url: url must be an http:// or https:// URL with a host",
        ),
        ('command = "x"', "tools: Field required"),
        ('command = "x"\ntools = {}', "tools: Dictionary should have at least 1 item"),
        (
            'command = "x"\ntools = { a = "write" }',
            "tools.a.kind: Input should be 'read' or 'effect'",
        ),
        (
            'command = "x"\ntools = { a = { kind = "read", key_arg = "k" } }',
            "tools.a: key_arg only apply to an effect tool",
        ),
        (
            'command = "x"\ntools = { a = { kind = "effect", reconcile = "b" }, b = "effect" }',
            "tools: a: reconcile = 'b' must name a tool declared \"read\"",
        ),
        ('command = "x"\ntools = { "a b" = "read" }', "'a b' is not an MCP tool name"),
        ('comand = "x"\ntools = { a = "read" }', "comand: Extra inputs are not permitted"),
        (
            'command = "x"\ntimeout_s = 0\ntools = { a = "read" }',
            "timeout_s: Input should be greater than 0",
        ),
        (
            'command = "x"\nheaders = { A = "${T}" }\ntools = { a = "read" }',
            "headers are for a url server; a command gets env",
        ),
        (
            'url = "http://127.0.0.1/mcp"\nargs = ["-v"]\ntools = { a = "read" }',
            "args, env and cwd are for a command",
        ),
    ],
)
def test_each_bad_key_is_one_clear_error_naming_the_file_and_the_key(
    tmp_path: Path, table: str, expected: str
) -> None:
    path = write_config(tmp_path, f"[mcp.crm]\n{table}\n")
    app = codara.App(f"sqlite:///{tmp_path}/c.db", config_file=path)
    with pytest.raises(ConfigError) as err:
        _ = app.mcp
    assert err.value.message.startswith(f"[mcp.crm] in {path}: ")
    assert expected in err.value.message
    assert err.value.hint == "see docs/mcp.md for the keys of an MCP server"
    assert "TOKEN=abc" not in err.value.message  # a value is never echoed for env
    assert "Bearer abc" not in err.value.message  # nor for headers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[mcp]\ncrm = 3\n", "mcp.crm in {path} must be a table"),
        (
            '[mcp."c r m"]\ncommand = "x"\ntools = { a = "read" }\n',
            "[mcp.c r m] in {path}: a server name is a letter",
        ),
        (
            GOOD + '[mcp.erp]\ncommand = "y"\ntools = { refund = { kind = "effect", effect = '
            '"mcp.crm.refund" } }\n',
            "[mcp.erp] in {path}: tools.refund is effect 'mcp.crm.refund', which [mcp.crm] "
            "tools.refund already is",
        ),
    ],
)
def test_tables_and_names_are_checked_too(tmp_path: Path, text: str, expected: str) -> None:
    path = write_config(tmp_path, text)
    app = codara.App(f"sqlite:///{tmp_path}/c.db", config_file=path)
    with pytest.raises(ConfigError, match=None) as err:
        _ = app.mcp
    assert expected.format(path=path) in err.value.message


def test_the_example_in_the_docs_loads(tmp_path: Path) -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "mcp.md").read_text()
    example = docs.split("```toml\n", 1)[1].split("```", 1)[0]
    app = codara.App(f"sqlite:///{tmp_path}/c.db", config_file=write_config(tmp_path, example))
    assert sorted(app.mcp.configs) == ["billing", "crm"]
    assert "mcp.crm.refund" in app.effects.by_name
    assert app.mcp.configs["crm"].tools["refund"].key_for_reconcile == "idempotency_key"


def test_a_good_table_starts_nothing_and_registers_its_effect_tools(tmp_path: Path) -> None:
    text = GOOD + '[mcp.erp]\nurl = "https://erp.example/mcp"\ntools = { post = { kind = ' \
        '"effect", effect = "erp.post" } }\n'  # fmt: skip
    app = codara.App(f"sqlite:///{tmp_path}/c.db", config_file=write_config(tmp_path, text))
    assert sorted(app.effects.by_name) == ["erp.post", "mcp.crm.refund"]
    assert app.mcp.connection("crm").opened == 0


async def test_a_policy_on_an_effect_tool_denies_before_any_server_starts(
    tmp_path: Path, sqlite_url: str, stdio_server: ToolServer
) -> None:
    policy = (
        '[effects."mcp.crm.refund".policy_input]\namount_cents = "int"\n'
        '[[effects."mcp.crm.refund".policies]]\nname = "small-only"\n'
        'when = "amount_cents > 1000"\noutcome = "deny"\n'
    )
    tools = '{ refund = "effect" }'
    app = codara.App(
        sqlite_url, config_file=write_config(tmp_path, stdio_table(tools=tools) + policy)
    )
    install_reviews(app)

    @app.workflow(name="refunds")
    async def refunds(ctx: codara.Context, amount: int) -> str:
        try:
            await ctx.effect("mcp.crm.refund", {"order_id": "P-1", "amount_cents": amount})
        except EffectFailedError as exc:
            return f"{exc.outcome}: {exc.message}"
        return "done"

    async with app:
        said = await app.run("refunds", 5000)
        opened = app.mcp.connection("crm").opened
    assert said.startswith("denied: effect 'mcp.crm.refund' was denied: denied (small-only: ")
    assert opened == 0
    assert stdio_server.calls() == []
