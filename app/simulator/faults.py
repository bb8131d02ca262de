"""Injected faults on REST calls (admin ``POST /_sim/faults``)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast, get_args

__all__ = ["KINDS", "Fault", "FaultBook", "FaultKind"]

FaultKind = Literal["error500", "timeout", "malformed", "throttle", "slow", "expire_tokens"]
KINDS: tuple[str, ...] = get_args(FaultKind)


@dataclass(frozen=True, slots=True)
class Fault:
    """One active fault. ``delay_seconds``: extra delay for ``slow``, hang time for ``timeout``."""

    kind: FaultKind
    probability: float
    until: float
    account: str | None
    delay_seconds: float

    def to_json(self, now: float) -> dict[str, object]:
        return {
            "kind": self.kind,
            "probability": self.probability,
            "secondsLeft": round(max(self.until - now, 0.0), 3),
            "account": self.account,
            "delaySeconds": self.delay_seconds,
        }


def parse_kind(value: object) -> FaultKind:
    if not isinstance(value, str) or value not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    return cast(FaultKind, value)


class FaultBook:
    """Active faults; the first matching fault whose dice roll hits applies to a call."""

    def __init__(
        self, rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rng = rng or random.Random()
        self.clock = clock
        self._faults: list[Fault] = []

    def add(
        self,
        kind: FaultKind,
        probability: float,
        seconds: float,
        account: str | None = None,
        delay_seconds: float | None = None,
    ) -> Fault:
        default_delay = 120.0 if kind == "timeout" else 2.0
        fault = Fault(
            kind,
            probability,
            self.clock() + seconds,
            account,
            default_delay if delay_seconds is None else delay_seconds,
        )
        self._faults.append(fault)
        return fault

    def clear(self) -> None:
        self._faults.clear()

    def active(self) -> list[Fault]:
        now = self.clock()
        self._faults = [f for f in self._faults if f.until > now]
        return list(self._faults)

    def pick(self, account: str) -> Fault | None:
        """The fault to apply to one call of ``account``, if any."""
        if not self._faults:
            return None
        for fault in self.active():
            if fault.account is not None and fault.account != account:
                continue
            if fault.probability >= 1.0 or self.rng.random() < fault.probability:
                return fault
        return None
