"""The classifier's trainer: multinomial logistic regression by full-batch L-BFGS, in numpy.

Minimises the mean cross-entropy plus ``l2/2 |W|^2`` on standardised features, started from
zero, so the same data always gives the same weights (no random start, no shuffling).

Does more data make it worse? Measured on BANKING77 (the reference workload's split: a
2,000-message inbox held out, 20 per intent to tune, seed 77), it does not: 60 per intent
(4,413 messages) gives 91.05% accuracy on the inbox, all the rest (6,459) 92.10%, and the
same holds for seeds 1, 2 and 3 (+0.8 to +1.3 points). Run to a gradient 1,000 times
tighter, both move by at most 0.1 point: the default stopping rule is converged, the
regularisation (a mean loss, so its weight per example does not change with n) does not
need rescaling with n, and weighting classes to balance them did not help. What this
module guarantees is that the fit says when it did not converge (:class:`Fitted`), so a
drop of that kind shows in the log instead of in the accuracy.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Fitted:
    """The weights and bias on raw features, and how the optimisation ended."""

    weights: F64
    bias: F64
    iterations: int
    converged: bool
    """The gradient fell by ``grad_rtol`` or the loss stopped falling; False when the
    iteration limit or the line search stopped it first."""
    gradient_ratio: float
    """The final gradient norm over the starting one."""


def softmax(logits: F64) -> F64:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probs: F64 = exp / exp.sum(axis=1, keepdims=True)
    return probs


def train(x: F64, y: npt.NDArray[np.int64], k: int, l2: float, max_iter: int) -> Fitted:
    """Minimise mean cross-entropy + l2/2 |W|^2 on standardised features; the weights and
    bias come back folded onto raw features."""
    n, d = x.shape
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-12] = 1.0
    z = (x - mean) / scale
    rows = np.arange(n)

    def objective(theta: F64) -> tuple[float, F64]:
        w, b = theta[: d * k].reshape(d, k), theta[d * k :]
        logits = z @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(axis=1))
        loss = float((log_norm - logits[rows, y]).mean() + 0.5 * l2 * dot(w, w))
        delta = np.exp(logits - log_norm[:, None])
        delta[rows, y] -= 1.0
        delta /= n
        grad = np.concatenate([(z.T @ delta + l2 * w).ravel(), delta.sum(axis=0)])
        return loss, grad

    start = np.zeros(d * k + k)
    g_start = objective(start)[1]
    g0 = math.sqrt(dot(g_start, g_start))
    theta, iterations, converged = lbfgs(objective, start, max_iter)
    g_end = objective(theta)[1]
    w, b = theta[: d * k].reshape(d, k), theta[d * k :]
    weights = w / scale[:, None]
    return Fitted(
        weights=weights,
        bias=b - mean @ weights,
        iterations=iterations,
        converged=converged,
        gradient_ratio=math.sqrt(dot(g_end, g_end)) / g0 if g0 > 0 else 0.0,
    )


def dot(a: F64, b: F64) -> float:
    # Not BLAS: on a busy machine a threaded ddot waits far longer than this loop takes.
    return float(np.multiply(a, b).sum())


def lbfgs(
    fun: Callable[[F64], tuple[float, F64]],
    theta: F64,
    max_iter: int,
    *,
    memory: int = 10,
    grad_rtol: float = 1e-3,
    ftol: float = 1e-9,
) -> tuple[F64, int, bool]:
    """Limited-memory BFGS with a backtracking (Armijo) line search; deterministic.

    Stops, converged, when the gradient norm has fallen by ``grad_rtol`` (held-out accuracy
    stops moving well before that on BANKING77) or the loss stops falling; not converged
    after ``max_iter`` steps or when the line search finds no lower loss.
    """
    f, g = fun(theta)
    g_stop = grad_rtol * math.sqrt(dot(g, g))
    history: deque[tuple[F64, F64, float]] = deque(maxlen=memory)
    for iteration in range(1, max_iter + 1):
        g_norm = math.sqrt(dot(g, g))
        if g_norm <= g_stop:
            return theta, iteration - 1, True
        q = g.copy()
        alphas = []
        for s, yv, rho in reversed(history):
            alpha = rho * dot(s, q)
            q -= alpha * yv
            alphas.append(alpha)
        if history:
            s, yv, _ = history[-1]
            q *= dot(s, yv) / dot(yv, yv)
        else:
            q /= max(1.0, g_norm)
        for (s, yv, rho), alpha in zip(history, reversed(alphas), strict=True):
            q += s * (alpha - rho * dot(yv, q))
        direction = -q
        slope = dot(g, direction)
        if slope >= 0.0:  # not a descent direction: restart from steepest descent
            history.clear()
            direction, slope = -g / max(1.0, g_norm), -g_norm * g_norm / max(1.0, g_norm)
        step = 1.0
        while True:
            candidate = theta + step * direction
            f_new, g_new = fun(candidate)
            if f_new <= f + 1e-4 * step * slope:
                break
            step *= 0.5
            if step < 1e-12:
                return theta, iteration, False
        s_new, y_new = candidate - theta, g_new - g
        sy = dot(s_new, y_new)
        if sy > 1e-12:
            history.append((s_new, y_new, 1.0 / sy))
        converged = f - f_new <= ftol * max(abs(f), abs(f_new), 1.0)
        theta, f, g = candidate, f_new, g_new
        if converged:
            return theta, iteration, True
    return theta, max_iter, math.sqrt(dot(g, g)) <= g_stop
