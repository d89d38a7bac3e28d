"""Quorum tracking for one request: when have enough of its N replicas answered?

A coordinator sends a read or a write to N replicas and feeds every answer into a
`QuorumTracker` as it arrives (`on_reply`, `on_error`, `on_timeout`). Each call returns a
`Decision`: still pending, or success (`required` replicas answered: R for reads, W for
writes), unavailable (too many replicas failed for `required` to be reachable), or timeout.
A decision is made once; the call that makes it returns it with `is_new` set, so the
coordinator answers its client exactly once.

For reads the tracker joins the replicas' key states (`merged`, see `merge_states`) and
keeps accepting late replies after the decision, so the coordinator can read-repair the
replicas whose answer was stale (`stale_replicas`, `repair_for`).

Pure, event-driven logic: no I/O, no clocks, no waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from kvactors.core.versions import EMPTY_STATE, KeyState, merge_states

__all__ = ["Decision", "Outcome", "QuorumKind", "QuorumTracker"]


class QuorumKind(Enum):
    READ = "read"
    WRITE = "write"


class Outcome(Enum):
    PENDING = "pending"
    SUCCESS = "success"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class Decision:
    """The tracker's state after an event; `is_new` only on the event that decided it."""

    outcome: Outcome
    is_new: bool = False

    @property
    def is_final(self) -> bool:
        return self.outcome is not Outcome.PENDING


_PENDING = Decision(Outcome.PENDING)
# Every decision there can be, made once: a tracker hands out these, never new ones.
_SETTLED = {outcome: Decision(outcome) for outcome in Outcome}
_NEW = {outcome: Decision(outcome, is_new=True) for outcome in Outcome}


class QuorumTracker:
    """Counts one request's replica answers against `required` (R or W) out of `replicas` (N).

    Each replica counts once: its first answer (reply or error) is the one that counts, and
    answers from replicas that are not targets are ignored, since both can come from a
    confused or retrying peer. `required` above the number of replicas is unavailable from
    the start: check `decision` right after construction.
    """

    __slots__ = ("_errors", "_kind", "_merged", "_outcome", "_replicas", "_replies", "_required")

    def __init__(self, kind: QuorumKind, replicas: tuple[str, ...], required: int) -> None:
        if required < 1:
            raise ValueError("a quorum needs at least one replica")
        if len(set(replicas)) != len(replicas):
            raise ValueError("quorum replicas must be distinct")
        self._kind = kind
        self._replicas = replicas
        self._required = required
        self._replies: dict[str, KeyState] = {}
        self._errors: dict[str, str] = {}
        self._merged = EMPTY_STATE
        self._outcome = Outcome.UNAVAILABLE if required > len(replicas) else Outcome.PENDING

    @property
    def kind(self) -> QuorumKind:
        return self._kind

    @property
    def replicas(self) -> tuple[str, ...]:
        return self._replicas

    @property
    def required(self) -> int:
        return self._required

    @property
    def decision(self) -> Decision:
        """The current outcome, without registering an event (`is_new` is False)."""
        return _SETTLED[self._outcome]

    @property
    def complete(self) -> bool:
        """Every replica has answered (reply or error): nothing more will change."""
        return len(self._replies) + len(self._errors) == len(self._replicas)

    @property
    def merged(self) -> KeyState:
        """Reads: the join of every reply so far (empty: not found anywhere)."""
        return self._merged

    def replied(self) -> tuple[str, ...]:
        """The replicas that answered successfully, in target order."""
        return tuple(replica for replica in self._replicas if replica in self._replies)

    def errors(self) -> tuple[tuple[str, str], ...]:
        """`(replica, error_code)` for each replica that failed, in target order."""
        return tuple(
            (replica, self._errors[replica])
            for replica in self._replicas
            if replica in self._errors
        )

    def on_reply(self, replica: str, state: KeyState = EMPTY_STATE) -> Decision:
        """A replica answered. For reads `state` is its state of the key (empty: not
        found); for writes it is ignored."""
        if not self._is_first_answer(replica):
            return self.decision
        reply = state if self._kind is QuorumKind.READ else EMPTY_STATE
        self._replies[replica] = reply
        self._merged = merge_states(self._merged, reply)
        if len(self._replies) >= self._required:
            return self._decide(Outcome.SUCCESS)
        return self.decision

    def on_error(self, replica: str, error_code: str) -> Decision:
        """A replica failed (or is known to be unreachable)."""
        if not self._is_first_answer(replica):
            return self.decision
        self._errors[replica] = error_code
        still_possible = len(self._replicas) - len(self._errors)
        if still_possible < self._required:
            return self._decide(Outcome.UNAVAILABLE)
        return self.decision

    def on_timeout(self) -> Decision:
        """The request's deadline passed."""
        return self._decide(Outcome.TIMEOUT)

    def stale_replicas(self) -> tuple[str, ...]:
        """Reads: the replicas whose reply differs from `merged`, in target order.

        A "not found" reply is stale when another replica found something. Replicas that
        failed or have not answered are not listed: nothing is known about them.
        """
        return tuple(replica for replica in self.replied() if self.repair_for(replica) is not None)

    def repair_for(self, replica: str) -> KeyState | None:
        """Reads: `merged` when `replica`'s reply differs from it (read repair sends it and
        the replica merges it in); None when it is up to date or has not replied.

        `merged` includes the reply, so a reply that differs lacks something `merged`
        knows; states are canonical, so "differs" is plain inequality.
        """
        reply = self._replies.get(replica)
        if reply is None or reply == self._merged:
            return None
        return self._merged

    def _is_first_answer(self, replica: str) -> bool:
        return (
            replica in self._replicas
            and replica not in self._replies
            and replica not in self._errors
        )

    def _decide(self, outcome: Outcome) -> Decision:
        if self._outcome is not Outcome.PENDING:
            return self.decision
        self._outcome = outcome
        return _NEW[outcome]
