"""Effects: what changes the outside world, done once per run operation whatever crashes
(docs/effects.md). The names live in :mod:`codara.engine._effects`; this is their public
home, also reachable as ``codara.Effect``."""

from codara.engine._effects import (
    Effect,
    EffectCall,
    EffectFailedError,
    EffectRefused,
)

__all__ = ["Effect", "EffectCall", "EffectFailedError", "EffectRefused"]
