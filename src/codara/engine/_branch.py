"""Operation identity that does not depend on timing: the branch an operation runs in.

Every task a workflow creates (``asyncio.gather``, ``create_task``, ``TaskGroup``) is a
*branch*, numbered by its parent at the moment it is created: the workflow's own coroutine is
``""``, its first child task ``"0"``, that task's second child ``"0.1"``. Inside a branch,
operations are numbered in call order, which is deterministic because a branch's own code is
sequential. ``(branch, op)`` therefore names the same operation on the first run and on every
replay, whichever branch finishes first.

Numbers are assigned when a task is created, by a task factory installed on the event loop
(it chains to any factory already there). Code that runs inside a step, and tasks created
with an empty ``contextvars.Context()``, are not branches: they take no number.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from codara.engine._context import Context

__all__ = ["Branch", "current_branch", "install_task_factory", "outside_branches"]


class Branch:
    """One task of a workflow run: its path, and the counters of what it has done."""

    __slots__ = ("ctx", "next_child", "next_op", "path", "rand_n", "started", "task", "time")

    def __init__(self, ctx: Context, path: str, time: float) -> None:
        self.ctx = ctx
        self.path = path
        self.time = time  # the logical time: when this branch's last operation finished
        self.next_op = 0
        self.next_child = 0
        self.rand_n = 0
        self.task: asyncio.Task[Any] | None = None
        self.started = path != ""  # the root is marked started when its task is created

    def child(self) -> Branch:
        n = self.next_child
        self.next_child = n + 1
        return Branch(self.ctx, f"{self.path}.{n}" if self.path else str(n), self.time)


_BRANCH: contextvars.ContextVar[Branch | None] = contextvars.ContextVar(
    "codara_branch", default=None
)


def current_branch() -> Branch | None:
    return _BRANCH.get()


class outside_branches:  # a context manager, named as a phrase
    """While open, the current task is not a branch: code run inside a step (and the tasks
    it creates) take no branch or operation number."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _BRANCH.set(None)

    def __exit__(self, *exc: object) -> None:
        _BRANCH.reset(self._token)


def root_task(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], root: Branch
) -> asyncio.Task[Any]:
    """Start a run's workflow coroutine as the root branch ``""``."""
    install_task_factory(loop)
    context = contextvars.copy_context()
    context.run(_BRANCH.set, root)
    return loop.create_task(coro, context=context)


def install_task_factory(loop: asyncio.AbstractEventLoop) -> None:
    """Number new tasks created inside a workflow branch (idempotent; chains to a factory
    the application installed before)."""
    previous = loop.get_task_factory()
    if getattr(previous, "_codara_branches", False):
        return

    def factory(
        loop: asyncio.AbstractEventLoop,
        coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any],
        **kwargs: Any,
    ) -> asyncio.Future[Any]:
        context: contextvars.Context | None = kwargs.pop("context", None)
        if context is None:
            context = contextvars.copy_context()
        parent = context.get(_BRANCH)
        branch: Branch | None = None
        if parent is not None:
            if not parent.started:
                parent.started = True
                branch = parent
            else:
                branch = parent.child()
                context = context.copy()
                context.run(_BRANCH.set, branch)
        if previous is not None:
            task = previous(loop, coro, context=context, **kwargs)  # type: ignore[call-arg]
        else:
            task = asyncio.Task(coro, loop=loop, context=context, **kwargs)
        if branch is not None and isinstance(task, asyncio.Task):
            branch.task = task
            ctx = branch.ctx
            ctx.progressed()
            task.add_done_callback(lambda _: ctx.progressed())
        return task

    factory._codara_branches = True  # type: ignore[attr-defined]
    loop.set_task_factory(factory)
