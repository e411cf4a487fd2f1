"""Test helpers that ship with Codara, for your own workflow tests.

:class:`FakeLLMServer` is a loopback stand-in for the OpenAI and Anthropic APIs (in the spirit of
``httpx.MockTransport``): point :class:`codara.models.LLMSettings` ``base_url`` at it and script
its answers with :class:`FakeReply`. :class:`FakeAPIServer` is a loopback JSON API for HTTP
sources that misbehaves on request (:class:`FakeResponse`: late, 5xx, 429, wrong content type,
cut short, redirected). :class:`FakeClock` is a clock your tests move by hand
(``App(clock=...)``), for timers, deadlines and leases.
"""

from codara.testing._clock import FakeClock
from codara.testing._fake_api import FakeAPIServer, FakeHTTPRequest, FakeResponse
from codara.testing._fake_llm import FakeLLMServer, FakeReply, FakeRequest

__all__ = [
    "FakeAPIServer",
    "FakeClock",
    "FakeHTTPRequest",
    "FakeLLMServer",
    "FakeReply",
    "FakeRequest",
    "FakeResponse",
]
