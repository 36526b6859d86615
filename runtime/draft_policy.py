"""How many tokens to draft next round: the k that maximizes expected tokens per second.

A round with k drafts costs k drafter steps (or one k-token drafter call) plus one target pass
over k + 1 tokens, and emits between 1 and k + 1 tokens; k = 0 is plain decoding, one token per
target call. Whether drafting pays depends on two things only the device can tell: what the
calls cost (CostTable) and how often drafts survive (AcceptanceEstimate).

Expected tokens per round. Let a_i be the probability that draft i is accepted given that
drafts 1..i-1 were (the verifier stops at the first rejection, so a later draft is never judged
on its own). Draft j is emitted iff drafts 1..j are all accepted, with probability
P_j = a_1 * a_2 * ... * a_j. The target always adds one token of its own: the correction at the
first rejection, or the bonus token after k acceptances. By linearity of expectation:

    E(k) = 1 + sum_{j=1..k} P_j = 1 + a_1 + a_1 a_2 + ... + a_1 a_2 ... a_k

(the same as sum over m = 0..k of P(exactly m accepted) * (m + 1), which is how the tests check it).
The policy picks the k in 0..max_k with the largest E(k) / cost(k), where cost(0) = decode and
cost(k) = min(k * draft_step, draft_call[k]) + verify[k + 1]; ties go to the smaller k. Drafting
must beat plain decoding by `margin` (5%): the acceptance estimate is noisy, and where drafting
barely pays on paper (a fast .pte), rounds drafted on a lucky estimate lose more than a near-tie
could win. Between draft lengths the policy is sticky: it keeps the previous round's k > 0 unless
another k > 0 beats it by `stickiness` (5%), because switching costs what no table entry shows: the
.pte's one verify method re-plans its XNNPACK operators for each new token count and each draft
length is another method with its own weights to bring into cache (shipped pair, one run, machine
busy: [chain_2, verify(3)] then [chain_4, verify(5)] in alternation took 0.76 ms per pair of rounds
more than each round repeated, against 3.2 ms for a k = 2 round), and near-ties between lengths,
which a noisy acceptance estimate flips every few rounds, would pay it again and again. The same
holds between drafting and plain decoding (a plain round on the .pte is verify on one token): drafting
starts when it beats plain by the margin, and a length chosen on merit (not a probe) goes on while it
predicts at least plain decoding's rate (the shipped pair's .pte, greedy, before this hysteresis: auto
interleaved 1,665 plain, 745 k = 1 and 316 k = 2 rounds for 1.006x plain, where k = 1 alone gave 1.068x).
While plain decoding wins, a probe round drafts anyway every probe_every plain rounds;
each probe that leaves plain decoding ahead doubles that wait (up to 16x), and a drafting win
resets it, so a drafter that does not pay on this device costs less and less.

Portability: the decision uses IEEE double +, -, *, / and comparisons only, each in a fixed order,
so android_demo/native/draft_policy.cpp built with -ffp-contract=off (no fused a*b+c, which
rounds once instead of twice) makes the same decision from the same inputs. Keep it that way:
no pow/exp/log, no numpy, and no sum() (Python 3.12 sums floats with compensation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from mtp_edge.models.errors import MtpEdgeError


class DraftPolicyError(MtpEdgeError, ValueError):
    """A cost table, acceptance estimate or policy setting that cannot be used as given."""


class CostTableError(DraftPolicyError):
    """A cost table with a missing, unknown or impossible entry; the message names the field."""


# While probes keep losing to plain decoding, the wait between them doubles up to this many times probe_every.
MAX_PROBE_BACKOFF = 16

# A live timing counts as at most this many times the entry it updates (CostTable.measured).
MAX_TIMING_JUMP = 2.0

# The calls a backend can time, as observe_call names them.
CALLS = ("decode", "verify", "draft_step", "draft_call")


def _seconds(name: str, value, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CostTableError(f"cost table: {name} must be a number of seconds, got {value!r}.")
    value = float(value)
    # Costs divide the expected tokens: a zero target call would make every rate infinite.
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise CostTableError(f"cost table: {name} is {value!r} seconds; it must be a finite number {bound}.")
    return value


def _lengths(name: str, table, low: int, high: int | None, positive: bool) -> MappingProxyType:
    """Validate {length: seconds}; high=None means the lengths must run low..max without a gap."""
    if not isinstance(table, Mapping):
        raise CostTableError(f"cost table: {name} must map a length to seconds, got {type(table).__name__}.")
    out = {}
    for key, value in table.items():
        if isinstance(key, bool) or not isinstance(key, int):
            raise CostTableError(f"cost table: {name} has the key {key!r}; lengths are whole numbers.")
        top = high if high is not None else math.inf
        if not low <= key <= top:
            what = f"{low}..{high}" if high is not None else f">= {low}"
            raise CostTableError(f"cost table: {name}[{key}] is out of range; lengths are {what}.")
        out[key] = _seconds(f"{name}[{key}]", value, positive=positive)
    if high is None:
        missing = [n for n in range(low, max(out, default=low - 1) + 1) if n not in out]
        if missing:
            raise CostTableError(
                f"cost table: {name} is missing length(s) {', '.join(map(str, missing))}: "
                f"give seconds for every length {low}..{max(out)}."
            )
    return MappingProxyType(dict(sorted(out.items())))


@dataclass(frozen=True)
class CostTable:
    """Seconds per call, measured on the device that runs the pair.

    decode: one target call on 1 token (a k = 0 round).
    verify[n]: one target call on n tokens, n = 2..K+1 (a round with n - 1 drafts); sets K.
    draft_step: one drafter step; k steps draft k tokens.
    draft_call[k]: optional, one drafter call that drafts k tokens at once (a fused k-step graph);
      used instead of k steps where it is cheaper.
    """

    decode: float
    draft_step: float
    verify: Mapping[int, float]
    draft_call: Mapping[int, float] = field(default_factory=dict)

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: validated copies replace the given values
        set_(self, "decode", _seconds("decode", self.decode, positive=True))
        set_(self, "draft_step", _seconds("draft_step", self.draft_step, positive=False))
        set_(self, "verify", _lengths("verify", self.verify, 2, None, positive=True))
        set_(self, "draft_call", _lengths("draft_call", self.draft_call, 1, self.max_k, positive=False))

    @property
    def max_k(self) -> int:
        return len(self.verify)

    def round_seconds(self, k: int) -> tuple[float, str]:
        """(seconds for a round with k drafts, how to draft: "none", "steps" or "call")."""
        if k == 0:
            return self.decode, "none"
        steps = k * self.draft_step
        call = self.draft_call.get(k)
        # A tie keeps the steps: that is what the loop does without a fused graph.
        if call is not None and call < steps:
            return call + self.verify[k + 1], "call"
        return steps + self.verify[k + 1], "steps"

    def measured(self, method: str, n_tokens: int, seconds: float, weight: float) -> CostTable:
        """This table with one timed call folded in by an exponential moving average.

        method/n_tokens: "decode" (1), "verify" (n tokens; n = 1 is a decode, as a k = 0 round
        calls verify), "draft_step" (n steps timed together) or "draft_call" (one call drafting n).
        weight: the new measurement's share, in (0, 1]; 1 keeps the latest timing only.
        A timing above MAX_TIMING_JUMP times its entry counts as that much: one stall of the machine
        (seen here: a forced-plain policy drafted 3 rounds in 60 after single slow decodes) must not
        flip the choice for the next ten rounds, while a cost that really grew still gets there, by
        at most weight x MAX_TIMING_JUMP per call.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0.0 <= seconds < math.inf:
            raise DraftPolicyError(f"a measured {method} call took {seconds!r} seconds; expected a finite number >= 0.")
        if not 0.0 < weight <= 1.0:
            raise DraftPolicyError(f"the timing weight must be in (0, 1], got {weight!r}.")
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
            raise DraftPolicyError(f"n_tokens must be a whole number >= 1, got {n_tokens!r}.")

        def ema(old: float, new: float) -> float:
            if old > 0.0 and new > MAX_TIMING_JUMP * old:
                new = MAX_TIMING_JUMP * old
            return old + weight * (new - old)

        if method == "verify" and n_tokens == 1:
            method = "decode"
        if method == "decode":
            if n_tokens != 1:
                raise DraftPolicyError(f"a decode call runs 1 token, got n_tokens={n_tokens}; time it as 'verify'.")
            return self._updated(decode=ema(self.decode, seconds))
        if method == "verify":
            if n_tokens not in self.verify:
                raise DraftPolicyError(
                    f"no verify[{n_tokens}] in the cost table: it covers 2..{self.max_k + 1} tokens."
                )
            return self._updated(verify=MappingProxyType({**self.verify, n_tokens: ema(self.verify[n_tokens], seconds)}))
        if method == "draft_step":
            return self._updated(draft_step=ema(self.draft_step, seconds / n_tokens))
        if method == "draft_call":
            if n_tokens > self.max_k:
                raise DraftPolicyError(f"draft_call[{n_tokens}] is beyond the cost table's K = {self.max_k}.")
            # The first timing of a call length seeds its entry.
            old = self.draft_call.get(n_tokens, seconds)
            calls = {**self.draft_call, n_tokens: ema(old, seconds)}
            return self._updated(draft_call=MappingProxyType(dict(sorted(calls.items()))))
        raise DraftPolicyError(f"unknown call {method!r}: expected one of {', '.join(CALLS)}.")

    def _updated(self, **entries) -> CostTable:
        """A copy with entries that are valid by construction (an average of valid seconds), without
        __post_init__'s validation: the loop folds in a timing every call, and on a fast .pte
        revalidating the whole table each time was a measurable part of a plain round."""
        table = object.__new__(CostTable)
        for name in ("decode", "draft_step", "verify", "draft_call"):
            object.__setattr__(table, name, entries.get(name, getattr(self, name)))
        return table

    def to_json(self) -> dict:
        # JSON keys are strings; from_json turns them back into lengths.
        return {
            "decode": self.decode,
            "draft_step": self.draft_step,
            "verify": {str(n): s for n, s in self.verify.items()},
            "draft_call": {str(k): s for k, s in self.draft_call.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping) -> CostTable:
        if not isinstance(data, Mapping):
            raise CostTableError(f"cost table: expected a JSON object, got {type(data).__name__}.")
        known = {"decode", "draft_step", "verify", "draft_call"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CostTableError(
                f"cost table: unknown field(s) {', '.join(map(repr, unknown))}; expected {sorted(known)}."
            )
        missing = [name for name in ("decode", "draft_step", "verify") if name not in data]
        if missing:
            raise CostTableError(f"cost table: missing field(s) {', '.join(missing)}.")

        def lengths(name: str) -> dict:
            table = data.get(name, {})
            if not isinstance(table, Mapping):
                raise CostTableError(f"cost table: {name} must be an object of length -> seconds, got {table!r}.")
            out = {}
            for key, value in table.items():
                try:
                    out[int(key)] = value
                except (TypeError, ValueError):
                    raise CostTableError(
                        f"cost table: {name} has the key {key!r}; lengths are whole numbers."
                    ) from None
            return out

        return cls(data["decode"], data["draft_step"], lengths("verify"), lengths("draft_call"))


@dataclass(frozen=True)
class AcceptanceEstimate:
    """Conditional acceptance per draft position, from decayed counts on top of a Beta prior.

    rate(1) = (prior_accept + accepted[1]) / (prior_accept + prior_reject + accepted[1] + rejected[1]);
    a later position's prior mean is the rate of the position before it, with the same weight
    n = prior_accept + prior_reject:
    rate(i) = (n * rate(i - 1) + accepted[i]) / (n + accepted[i] + rejected[i]).
    Why chained: a position is only judged in rounds that draft that deep. A flat prior (0.5) held
    positions never drafted at 0.5, so once one short draft beat plain decoding the policy had no
    reason to draft deeper and never learned that deeper drafts pay (ONNX greedy settled on K = 1
    where K = 4 paid 1.6x); the drafter's own record at the position before is the better guess.
    Only the observed counts decay, so a position not seen for a while drifts back towards its
    prior rather than to certainty. Positions are 1-based; the tuples hold 1..max_k.
    """

    max_k: int
    prior_accept: float = 1.0
    prior_reject: float = 1.0
    decay: float = 0.95  # per drafting round: a round 14 rounds old counts half
    accepted: tuple[float, ...] = ()
    rejected: tuple[float, ...] = ()

    def __post_init__(self):
        if isinstance(self.max_k, bool) or not isinstance(self.max_k, int) or self.max_k < 0:
            raise DraftPolicyError(f"max_k must be a whole number >= 0, got {self.max_k!r}.")
        for name in ("prior_accept", "prior_reject"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise DraftPolicyError(f"{name} must be a pseudo-count > 0, got {value!r}.")
        if not (isinstance(self.decay, (int, float)) and 0.0 < self.decay <= 1.0):
            raise DraftPolicyError(f"decay must be in (0, 1], got {self.decay!r}.")
        for name in ("accepted", "rejected"):
            counts = getattr(self, name) or (0.0,) * self.max_k
            if len(counts) != self.max_k:
                raise DraftPolicyError(f"{name} has {len(counts)} counts for max_k = {self.max_k}.")
            object.__setattr__(self, name, tuple(float(c) for c in counts))

    def rates(self) -> tuple[float, ...]:
        """a_1..a_max_k (one operation at a time, in the order draft_policy.cpp computes them)."""
        pa, pr = self.prior_accept, self.prior_reject
        weight = pa + pr
        out = []
        for i, (acc, rej) in enumerate(zip(self.accepted, self.rejected)):
            if i == 0:
                out.append((pa + acc) / (pa + pr + acc + rej))
            else:
                out.append((weight * out[i - 1] + acc) / (weight + acc + rej))
        return tuple(out)

    def observed(self, drafted: int, accepted: int) -> AcceptanceEstimate:
        """The estimate after a round that drafted `drafted` tokens and accepted the first `accepted`.

        Positions 1..accepted were accepted, position accepted + 1 was rejected (if any drafts are
        left), later ones were never judged. A round with no drafts tells nothing about the drafter
        and leaves the estimate as it is, so a long plain stretch does not age it.
        """
        if not 0 <= accepted <= drafted <= self.max_k:
            raise DraftPolicyError(
                f"a round reports {accepted} accepted of {drafted} drafted; "
                f"need 0 <= accepted <= drafted <= {self.max_k}."
            )
        if drafted == 0:
            return self
        acc = [c * self.decay for c in self.accepted]
        rej = [c * self.decay for c in self.rejected]
        for i in range(accepted):
            acc[i] += 1.0
        if accepted < drafted:
            rej[accepted] += 1.0
        return replace(self, accepted=tuple(acc), rejected=tuple(rej))


def expected_tokens(acceptance: Sequence[float], k: int) -> float:
    """E(k) = 1 + sum_{j<=k} prod_{i<=j} a_i (module docstring), accumulated left to right."""
    tokens, survive = 1.0, 1.0
    for a in acceptance[:k]:
        survive = survive * a
        tokens = tokens + survive
    return tokens


@dataclass(frozen=True)
class Plan:
    k: int
    draft_mode: str  # "none" (k = 0), "steps" (k drafter steps) or "call" (draft_call[k])
    tokens: float  # expected tokens emitted by the round
    seconds: float  # expected round time
    probe: bool = False  # drafting although plain decoding looks faster, to keep measuring acceptance

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def best_plan(costs: CostTable, acceptance: Sequence[float] | AcceptanceEstimate, max_k: int, margin: float = 0.0) -> Plan:
    """The round with the most expected tokens per second among k = 0..max_k; ties go to the smaller k.
    A k > 0 must beat plain decoding's rate by the factor 1 + margin."""
    rates = acceptance.rates() if isinstance(acceptance, AcceptanceEstimate) else tuple(acceptance)
    if not 0 <= max_k <= min(costs.max_k, len(rates)):
        raise DraftPolicyError(
            f"max_k = {max_k} but the cost table covers K <= {costs.max_k} and the acceptance {len(rates)} positions."
        )
    for i, a in enumerate(rates[:max_k], 1):
        if not 0.0 <= a <= 1.0:  # also rejects NaN
            raise DraftPolicyError(f"acceptance[{i}] = {a!r} is not a probability in [0, 1].")
    if not (isinstance(margin, (int, float)) and 0.0 <= margin < math.inf):
        raise DraftPolicyError(f"margin must be a finite number >= 0, got {margin!r}.")
    best = Plan(0, "none", 1.0, costs.decode)
    best_rate = (1.0 / costs.decode) * (1.0 + margin)
    tokens, survive = 1.0, 1.0
    for k in range(1, max_k + 1):
        # E(k) built on E(k - 1) in the same order as expected_tokens, so both agree bit for bit.
        survive = survive * rates[k - 1]
        tokens = tokens + survive
        seconds, mode = costs.round_seconds(k)
        rate = tokens / seconds
        if rate > best_rate:
            best, best_rate = Plan(k, mode, tokens, seconds), rate
    return best


def choose_k(costs: CostTable, acceptance: Sequence[float] | AcceptanceEstimate, max_k: int, margin: float = 0.0) -> int:
    return best_plan(costs, acceptance, max_k, margin).k


class DraftPolicy:
    """Picks k each round from live costs and acceptance, probing now and then while plain decoding wins.

    Call next_plan() (or next_k()) once before each round, then observe() with what the round did,
    and observe_call() with any timings. stickiness: a k > 0 keeps being drafted while no other
    k > 0 beats its expected rate by this fraction (module docstring: switching costs). Probing: when k = 0 looks best for `probe_every` rounds
    in a row, the next round drafts `probe_k` tokens anyway, so a drafter that starts doing better
    (the text got easier) is noticed; each probe after which plain decoding still wins doubles the
    wait (at most MAX_PROBE_BACKOFF times probe_every), a drafting win resets it. Counted in rounds,
    not time, so seeded runs repeat. margin: drafting must beat plain decoding by this fraction.
    frozen: timings never change the costs, so decisions depend only on the seeded tokens.
    probing: (probe_interval, plain_streak) to start from, where a live generation on the same backend
    left them (tuning.remember): a chat of many short replies would otherwise pay the first, closest
    probes in every reply although the drafter never paid (shipped pair's .pte, greedy, 56 generations of
    64 tokens: 61 probe rounds restarting each time, 20 carried over; each probe also re-plans verify for
    a new token count).
    """

    def __init__(
        self,
        costs: CostTable,
        max_k: int | None = None,
        *,
        acceptance: AcceptanceEstimate | None = None,
        probe_every: int = 16,
        probe_k: int = 2,
        timing_weight: float = 0.1,
        frozen: bool = False,
        margin: float = 0.05,
        stickiness: float = 0.05,
        probing: tuple[int, int] | None = None,
    ):
        self.max_k = costs.max_k if max_k is None else max_k
        if not 0 <= self.max_k <= costs.max_k:
            raise DraftPolicyError(f"max_k = {self.max_k} but the cost table covers K <= {costs.max_k}.")
        if probe_every < 0 or probe_k < 1:
            raise DraftPolicyError(
                f"probe_every must be >= 0 (0 = never) and probe_k >= 1; got {probe_every}, {probe_k}."
            )
        if not 0.0 < timing_weight <= 1.0:
            raise DraftPolicyError(f"timing_weight must be in (0, 1], got {timing_weight!r}.")
        self.costs = costs
        self.acceptance = acceptance if acceptance is not None else AcceptanceEstimate(self.max_k)
        if self.acceptance.max_k < self.max_k:
            raise DraftPolicyError(
                f"the acceptance estimate covers {self.acceptance.max_k} positions, max_k is {self.max_k}."
            )
        self.probe_every = probe_every
        self.probe_k = min(probe_k, self.max_k)
        self.timing_weight = timing_weight
        self.frozen = frozen
        if not (isinstance(margin, (int, float)) and 0.0 <= margin < math.inf):
            raise DraftPolicyError(f"margin must be a finite number >= 0, got {margin!r}.")
        self.margin = float(margin)
        if not (isinstance(stickiness, (int, float)) and 0.0 <= stickiness < math.inf):
            raise DraftPolicyError(f"stickiness must be a finite number >= 0, got {stickiness!r}.")
        self.stickiness = float(stickiness)
        self.last_k = 0  # the previous round's draft length
        self.last_probe = False  # whether the previous round was a probe
        self.probe_interval = probe_every  # plain rounds until the next probe; doubles while probes lose
        self.plain_streak = 0  # rounds in a row where k = 0 won
        if probing is not None:  # where an earlier generation's probing ended (tuning.remember)
            interval, streak = probing
            if isinstance(interval, bool) or not isinstance(interval, int) or isinstance(streak, bool) or not isinstance(streak, int) \
                    or streak < 0 or interval < 0:
                raise DraftPolicyError(f"probing must be (plain rounds between probes, plain rounds so far) >= 0, got {probing!r}.")
            self.probe_interval = min(max(interval, probe_every), MAX_PROBE_BACKOFF * probe_every)
            self.plain_streak = streak
        self.histogram = [0] * (self.max_k + 1)  # rounds per k handed out, probes included
        self.probe_rounds = 0

    def next_plan(self) -> Plan:
        plan = best_plan(self.costs, self.acceptance, self.max_k, self.margin)
        if plan.k > 0 and 0 < self.last_k <= self.max_k and plan.k != self.last_k:
            kept = self._plan(self.last_k)
            # Rates compared as best_plan compares them: tokens / seconds, one division each.
            if plan.tokens / plan.seconds <= (kept.tokens / kept.seconds) * (1.0 + self.stickiness):
                plan = kept
        elif plan.k == 0 and 0 < self.last_k <= self.max_k and not self.last_probe:
            # Hysteresis: drafting starts when it beats plain decoding by the margin, and a length
            # chosen on merit (not a probe) goes on while it still predicts plain's rate.
            kept = self._plan(self.last_k)
            if kept.tokens / kept.seconds >= plan.tokens / plan.seconds:
                plan = kept
        if plan.k == 0 and self.probe_k > 0 and self.probe_every > 0:
            if self.plain_streak >= self.probe_interval:
                self.plain_streak = 0
                self.probe_interval = min(2 * self.probe_interval, MAX_PROBE_BACKOFF * self.probe_every)
                self.probe_rounds += 1
                plan = replace(self._plan(self.probe_k), probe=True)
            else:
                self.plain_streak += 1
        elif plan.k > 0:
            self.plain_streak = 0
            self.probe_interval = self.probe_every
        self.histogram[plan.k] += 1
        self.last_k = plan.k
        self.last_probe = plan.probe
        return plan

    def _plan(self, k: int) -> Plan:
        seconds, mode = self.costs.round_seconds(k)
        return Plan(k, mode, expected_tokens(self.acceptance.rates(), k), seconds)

    def next_k(self) -> int:
        return self.next_plan().k

    def observe(self, drafted: int, accepted: int) -> None:
        """What a round did: it may have drafted fewer than asked (end of budget or cache)."""
        self.acceptance = self.acceptance.observed(drafted, accepted)

    def observe_call(self, method: str, n_tokens: int, seconds: float) -> None:
        if not self.frozen:
            self.costs = self.costs.measured(method, n_tokens, seconds, self.timing_weight)

    @property
    def probing(self) -> tuple[int, int]:
        """Where probing stands: (plain rounds between probes now, plain rounds since the last probe)."""
        return self.probe_interval, self.plain_streak

    def stats(self) -> dict:
        return {
            "rounds": sum(self.histogram),
            "k_histogram": {k: n for k, n in enumerate(self.histogram) if n},
            "plain_rounds": self.histogram[0],
            "probe_rounds": self.probe_rounds,
            "acceptance": list(self.acceptance.rates()),
            "costs": self.costs.to_json(),
            "frozen": self.frozen,
        }
