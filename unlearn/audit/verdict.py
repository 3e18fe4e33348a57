"""Claims and verdicts of an audit: one claim per evidence family, each resting on evidence against a control.

Every piece of evidence is one statistic measured on the whole forget set, for the candidate and for the control,
with the threshold the difference must exceed to count ("knowledge above the control"). A claim combines:

* **behaviour** evidence: what the candidate does on the forget set with no attack. Against a retain-only oracle
  the candidate must be down to the oracle's level: ``candidate - oracle > threshold`` means ``not_forgotten``.
  Against the original (no oracle) the candidate must have moved away from it: ``original - candidate <=
  threshold`` (it did not drop by the margin) means ``not_forgotten``.
* **recovery** evidence: the family's attack or evaluator, run identically on the candidate and the control.
  ``candidate - control > threshold`` means the attack recovers knowledge the control does not show: the answers
  were ``suppressed``, not removed.
* **control-free** evidence (used when there is no oracle): the candidate's statistic against a level that needs no
  control, e.g. the attribute pools' majority-chance accuracy after relearning; ``candidate - level > threshold``
  means recovered.

Verdicts are ordered ``not_forgotten < suppressed < forgotten``; the audit's verdict is the minimum over claims.
Without an oracle a claim reaches ``forgotten`` only when every piece of its control-free evidence stays at the
control-free level; a claim with no such evidence is capped at ``suppressed`` and says why. The rule never looks at
how a candidate was made: only at these numbers.

Direction: ``sign = +1`` for statistics where higher means more knowledge (accuracy, probability, AUC, CKA to the
original), ``-1`` where lower means more knowledge (rank of the true answer under the logit lens).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

VERDICTS = ("not_forgotten", "suppressed", "forgotten")  # ordered: the audit's verdict is the minimum
ROLES = ("behaviour", "recovery", "control_free")


@dataclass
class Evidence:
    """One statistic on the forget set for the candidate and the control (or a control-free level)."""

    metric: str
    candidate: float | None
    control: float | None  # the control's value, or the control-free level for role="control_free"
    threshold: float  # the margin the (signed) difference must exceed
    n: int  # items the statistic is computed on
    role: str = "recovery"  # behaviour | recovery | control_free
    sign: int = 1  # +1: higher = more knowledge; -1: lower = more knowledge
    note: str = ""

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"unknown evidence role {self.role!r}; valid: {', '.join(ROLES)}")

    @property
    def valid(self) -> bool:
        return all(v is not None and math.isfinite(v) for v in (self.candidate, self.control))

    @property
    def excess(self) -> float | None:
        """Signed knowledge of the candidate above the control (positive: more knowledge than the control)."""
        if not self.valid:
            return None
        return self.sign * (self.candidate - self.control)

    def fires(self, control_kind: str = "oracle") -> bool:
        """True when this evidence shows knowledge (see the module docstring for each role)."""
        if not self.valid:
            return False
        if self.role == "behaviour" and control_kind == "original":
            return -self.excess <= self.threshold  # did not drop below the original by the margin
        return self.excess > self.threshold

    def to_json(self) -> dict:
        d = asdict(self)
        d["excess"] = self.excess
        return d


@dataclass
class Claim:
    name: str
    verdict: str
    evidence: list[Evidence]
    reason: str
    details: dict = field(default_factory=dict)  # per-entity / per-variant detail

    def to_json(self) -> dict:
        return {"name": self.name, "verdict": self.verdict, "reason": self.reason,
                "evidence": [e.to_json() for e in self.evidence], "details": self.details}  # fmt: skip


def judge(name: str, evidence: list[Evidence], control_kind: str, details: dict | None = None) -> Claim:
    """The claim of one evidence family. ``control_kind``: ``oracle`` (a retain-only model) or ``original``."""
    if control_kind not in ("oracle", "original"):
        raise ValueError(f"control_kind must be oracle or original, not {control_kind!r}")
    beh = [e for e in evidence if e.role == "behaviour" and e.valid]
    rec = [e for e in evidence if e.role == "recovery" and e.valid]
    free = [e for e in evidence if e.role == "control_free" and e.valid]
    fired = [e for e in beh if e.fires(control_kind)]
    if fired:
        what = ", ".join(f"{e.metric} {e.candidate:.3f} vs control {e.control:.3f}" for e in fired)
        why = ("above the oracle's level by more than the margin" if control_kind == "oracle"
               else "not below the original's by the margin")  # fmt: skip
        return Claim(name, "not_forgotten", evidence, f"behaviour on the forget set {why}: {what}", details or {})
    if not beh and not rec and not free:
        return Claim(name, "suppressed", evidence, "no usable evidence (every statistic was missing or NaN); "
                     "capped at suppressed", details or {})  # fmt: skip
    up = [e for e in rec if e.fires(control_kind)] + [e for e in free if e.fires(control_kind)]
    if up:
        what = ", ".join(f"{e.metric} {e.candidate:.3f} vs {'level' if e.role == 'control_free' else 'control'} "
                         f"{e.control:.3f}" for e in up)  # fmt: skip
        base = ("behaviour at the control's level" if control_kind == "oracle"
                else "behaviour dropped below the original's")  # fmt: skip
        return Claim(name, "suppressed", evidence, f"{base}, but recovered: {what}", details or {})
    if control_kind == "original" and not free:
        return Claim(name, "suppressed", evidence, "no oracle and no control-free evidence in this family: the "
                     "verdict is capped at suppressed (pass --oracle to judge it)", details or {})  # fmt: skip
    why = ("behaviour and every attack / evaluator at the control's level" if control_kind == "oracle" else
           "behaviour dropped below the original's and every control-free statistic stays at its level")  # fmt: skip
    return Claim(name, "forgotten", evidence, why, details or {})


def overall(claims: list[Claim]) -> str:
    """The minimum verdict over claims (``not_forgotten`` < ``suppressed`` < ``forgotten``)."""
    if not claims:
        raise ValueError("an audit needs at least one claim")
    return min((c.verdict for c in claims), key=VERDICTS.index)


__all__ = ["VERDICTS", "ROLES", "Evidence", "Claim", "judge", "overall"]
