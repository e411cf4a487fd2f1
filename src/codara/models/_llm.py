"""Real LLM calls through Pydantic AI, recorded as a JSON-serialisable :class:`LLMCall`.

:func:`call_llm` runs a Pydantic AI agent once and returns everything the engine journals: the
output as JSON, the new messages (via ``ModelMessagesTypeAdapter``), token usage, cost and the
tool calls made. A replay reads the journaled record instead of calling the model, and
:meth:`LLMCall.output_as` re-validates the output into the caller's type.

API keys come only from the environment: :class:`LLMSettings` holds the *name* of the variable,
and the key's value never appears in a record or an error message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, model_validator
from pydantic_core import to_jsonable_python

from codara.errors import ConfigError, ModelCallError

if TYPE_CHECKING:  # pydantic_ai and the provider SDKs take seconds to import: load them on use
    from pydantic_ai import Tool
    from pydantic_ai.messages import ModelMessage
    from pydantic_ai.models import Model
    from pydantic_ai.settings import ModelSettings

__all__ = ["LLMCall", "LLMCallError", "LLMSettings", "ToolCallRecord", "build_model", "call_llm"]

Provider = Literal["openai", "anthropic", "openai-compatible"]
T = TypeVar("T")

_DEFAULT_KEY_ENV: dict[str, str] = {
    "openai": "OPENAI_API_KEY",
    "openai-compatible": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
}
_RETRYABLE_4XX = frozenset({408, 409, 425, 429})
_REDACTED = "[redacted]"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MIN_SECRET_LEN = 8  # shorter "keys" are placeholders (local servers); redacting them mangles text


class LLMSettings(BaseModel):
    """Which model to call and how. Holds the *name* of the API-key variable, never the key."""

    # hide_input_in_errors: a key pasted into api_key_env by mistake must not be echoed back.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    provider: Provider
    model: str = Field(min_length=1)
    base_url: str | None = None
    api_key_env: str = Field(default="", description="NAME of the env var holding the key")
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0)
    temperature: float | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, gt=0)
    input_price_per_mtok: float | None = Field(default=None, ge=0)
    output_price_per_mtok: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _defaults(self) -> LLMSettings:
        if not self.api_key_env:
            object.__setattr__(self, "api_key_env", _DEFAULT_KEY_ENV[self.provider])
        elif not _ENV_NAME.fullmatch(self.api_key_env):
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (like OPENAI_API_KEY),"
                " not the key itself"
            )
        if self.provider == "openai-compatible" and not self.base_url:
            raise ValueError("provider 'openai-compatible' needs a base_url")
        return self

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float | None:
        """The cost of the tokens at the configured prices, or None without prices."""
        if self.input_price_per_mtok is None or self.output_price_per_mtok is None:
            return None
        return (
            input_tokens * self.input_price_per_mtok + output_tokens * self.output_price_per_mtok
        ) / 1_000_000


class ToolCallRecord(BaseModel):
    """One function-tool call the model made during the run, and what the tool returned."""

    name: str
    args: dict[str, JsonValue]
    result: JsonValue = None
    error: str | None = None


class LLMCall(BaseModel):
    """The journaled record of one :func:`call_llm`. JSON in, JSON out; no secrets."""

    model_config = ConfigDict(frozen=True)

    output: JsonValue
    messages_json: list[dict[str, JsonValue]]
    input_tokens: int
    output_tokens: int
    requests: int
    model_name: str
    provider: Provider
    cost_usd: float | None = None
    tool_calls: list[ToolCallRecord] = Field(default_factory=list)

    def output_as(self, type_: type[T]) -> T:
        """Re-validate :attr:`output` into ``type_`` (a pydantic model, ``str``, ``list[T]``)."""
        return TypeAdapter(type_).validate_python(self.output)

    def messages(self) -> list[ModelMessage]:
        """The new messages as Pydantic AI objects, e.g. for ``message_history=``."""
        from pydantic_ai.messages import ModelMessagesTypeAdapter

        return ModelMessagesTypeAdapter.validate_python(self.messages_json)


class LLMCallError(ModelCallError):
    """A provider call failed; ``non_retryable`` is True when retrying the request is futile."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        model: str,
        status_code: int | None = None,
        non_retryable: bool = False,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.provider = provider
        self.model = model
        self.status_code = status_code
        self.non_retryable = non_retryable


def _api_key(settings: LLMSettings) -> str:
    key = os.environ.get(settings.api_key_env, "").strip()
    if not key:
        raise ConfigError(
            f"no API key for {settings.provider} model {settings.model!r}: "
            f"environment variable {settings.api_key_env} is not set",
            hint=f"export {settings.api_key_env}=... (keys are read only from the environment)",
        )
    return key


def _model_settings(settings: LLMSettings) -> ModelSettings:
    from pydantic_ai.settings import ModelSettings

    model_settings = ModelSettings(timeout=settings.timeout_s, max_retries=settings.max_retries)
    if settings.temperature is not None:
        model_settings["temperature"] = settings.temperature
    if settings.max_tokens is not None:
        model_settings["max_tokens"] = settings.max_tokens
    return model_settings


def build_model(settings: LLMSettings) -> Model:
    """A Pydantic AI model for ``settings``, with the key read from ``settings.api_key_env``.

    OpenAI and OpenAI-compatible endpoints use Chat Completions (``OpenAIChatModel``), not the
    Responses API, so any server that speaks ``/chat/completions`` works.
    """
    key = _api_key(settings)
    model_settings = _model_settings(settings)
    if settings.provider == "anthropic":
        from pydantic_ai.models.anthropic import AnthropicModel
        from pydantic_ai.providers.anthropic import AnthropicProvider

        anthropic = AnthropicProvider(api_key=key, base_url=settings.base_url)
        return AnthropicModel(settings.model, provider=anthropic, settings=model_settings)
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.profiles import merge_profile
    from pydantic_ai.profiles.openai import (
        OpenAIJsonSchemaTransformer,
        OpenAIModelProfile,
        openai_model_profile,
    )
    from pydantic_ai.providers.openai import OpenAIProvider

    openai = OpenAIProvider(base_url=settings.base_url, api_key=key)
    if settings.provider == "openai":
        return OpenAIChatModel(settings.model, provider=openai, settings=model_settings)
    # A generic server: the profile OpenAI-compatible gateways share, without the settings
    # (allowed_tools, prompt-cache options) only api.openai.com honours.
    profile = merge_profile(
        OpenAIModelProfile(json_schema_transformer=OpenAIJsonSchemaTransformer),
        openai_model_profile(settings.model),
    )
    return OpenAIChatModel(
        settings.model, provider=openai, profile=profile, settings=model_settings
    )


async def call_llm(
    settings: LLMSettings,
    *,
    instructions: str,
    prompt: str,
    output_type: type[Any] = str,
    tools: Sequence[Callable[..., Any] | Tool[Any]] = (),
) -> LLMCall:
    """Run a Pydantic AI agent once and return its JSON-serialisable record.

    Raises :class:`codara.errors.ConfigError` when the key variable is unset, and
    :class:`LLMCallError` (a :class:`codara.errors.ModelCallError`) when the provider fails.
    """
    from pydantic_ai import Agent, Tool
    from pydantic_ai.exceptions import (
        ModelAPIError,
        ModelRequestTimeout,
        UnexpectedModelBehavior,
        UserError,
    )

    model = build_model(settings)
    secret = _api_key(settings)
    agent_tools = [tool if isinstance(tool, Tool) else Tool(tool) for tool in tools]
    agent: Agent[None, Any] = Agent(
        model, instructions=instructions, output_type=output_type, tools=agent_tools
    )
    try:
        async with agent:
            result = await agent.run(prompt)
    except (ModelAPIError, ModelRequestTimeout, UnexpectedModelBehavior) as exc:
        raise _call_error(exc, settings, secret) from None
    except UserError as exc:
        message = _redact(str(exc), secret)
        raise ConfigError(f"{settings.provider} model {settings.model!r}: {message}") from None

    return agent_record(result, settings, {tool.name for tool in agent_tools}, secret)


def agent_record(result: Any, settings: LLMSettings, tools: set[str], secret: str) -> LLMCall:
    """The :class:`LLMCall` of a finished agent run (``AgentRunResult``), the key redacted."""
    from pydantic_ai.messages import ModelMessagesTypeAdapter

    new_messages = result.new_messages()
    usage = result.usage
    record = LLMCall(
        output=to_jsonable_python(result.output),
        messages_json=ModelMessagesTypeAdapter.dump_python(new_messages, mode="json"),
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        requests=usage.requests,
        model_name=_response_model_name(new_messages) or settings.model,
        provider=settings.provider,
        cost_usd=settings.cost_usd(usage.input_tokens, usage.output_tokens),
        tool_calls=_tool_calls(new_messages, tools),
    )
    if len(secret) >= _MIN_SECRET_LEN and secret in record.model_dump_json():
        # e.g. a model echoing the key: never journal it (string values only, not field names)
        record = LLMCall.model_validate(_redact_values(record.model_dump(mode="json"), secret))
    return record


def _response_model_name(messages: list[ModelMessage]) -> str | None:
    from pydantic_ai.messages import ModelResponse

    for message in reversed(messages):
        if isinstance(message, ModelResponse) and message.model_name:
            return message.model_name
    return None


def _tool_calls(messages: list[ModelMessage], names: set[str]) -> list[ToolCallRecord]:
    """Function-tool calls paired with their results (output tools like final_result excluded)."""
    from pydantic_ai.messages import (
        ModelRequest,
        ModelResponse,
        RetryPromptPart,
        ToolCallPart,
        ToolReturnPart,
    )

    calls: dict[str, ToolCallRecord] = {}
    for message in messages:
        if isinstance(message, ModelResponse):
            for part in message.parts:
                if isinstance(part, ToolCallPart) and part.tool_name in names:
                    args = to_jsonable_python(part.args_as_dict())
                    calls[part.tool_call_id] = ToolCallRecord(name=part.tool_name, args=args)
        elif isinstance(message, ModelRequest):
            for rpart in message.parts:
                call = calls.get(getattr(rpart, "tool_call_id", ""))
                if call is None:
                    continue
                if isinstance(rpart, ToolReturnPart):
                    content = to_jsonable_python(rpart.content, fallback=str)
                    if rpart.outcome == "success":
                        call.result = content
                    else:  # "retried" (ModelRetry), "failed", "denied", "interrupted"
                        call.error = f"{rpart.outcome}: {content}"
                elif isinstance(rpart, RetryPromptPart):
                    call.error = rpart.model_response()
    return list(calls.values())


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, _REDACTED) if len(secret) >= _MIN_SECRET_LEN else text


def _redact_values(value: Any, secret: str) -> Any:
    if isinstance(value, str):
        return _redact(value, secret)
    if isinstance(value, list):
        return [_redact_values(item, secret) for item in value]
    if isinstance(value, dict):
        return {_redact(k, secret): _redact_values(v, secret) for k, v in value.items()}
    return value


def _call_error(exc: Exception, settings: LLMSettings, secret: str) -> LLMCallError:
    """One clear error for every provider failure, saying whether a retry can help."""
    from pydantic_ai.exceptions import (
        ContentFilterError,
        ModelAPIError,
        ModelHTTPError,
        ModelRequestTimeout,
    )

    where = f"{settings.provider} model {settings.model!r}"
    if settings.base_url:
        where += f" at {settings.base_url}"
    status: int | None = None
    if isinstance(exc, ModelHTTPError):
        status = exc.status_code
        retryable = status in _RETRYABLE_4XX or status >= 500
        detail = _provider_message(exc.body) or type(exc).__name__
        message = f"{where} answered HTTP {status}: {detail}"
        if status in (401, 403):
            hint = f"check the key in {settings.api_key_env} and that it may use this model"
        elif status == 429:
            hint = "rate limited: retry later, or lower the concurrency of this step"
        elif status >= 500:
            hint = "the provider failed; the call is retryable"
        else:
            hint = "the request was rejected; fix the model name, prompt or settings"
    elif isinstance(exc, ModelAPIError | ModelRequestTimeout):
        retryable = True
        message = f"could not reach {where}: {_root_cause(exc)}"
        hint = "check base_url and the network; the call is retryable"
    else:
        retryable = not isinstance(exc, ContentFilterError)
        message = f"{where} behaved unexpectedly: {exc}"
        hint = "the answer was unusable (e.g. did not fit the output type); retrying may help"
    return LLMCallError(
        _redact(message, secret),
        provider=settings.provider,
        model=settings.model,
        status_code=status,
        non_retryable=not retryable,
        hint=hint,
    )


def _root_cause(exc: BaseException) -> str:
    """The innermost cause, e.g. ``ConnectError: [Errno 111] Connection refused``."""
    seen: set[int] = set()
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(exc))
        exc = inner
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _provider_message(body: object) -> str | None:
    """The human message inside an OpenAI/Anthropic error body, if there is one."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return None
