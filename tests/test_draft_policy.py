"""The draft-length policy (runtime/draft_policy.py) and its C++ port (android_demo/native/draft_policy.cpp).

choose_k is checked against an independent brute force in exact rational arithmetic; the C++ port
against the Python module on random scenarios, bit for bit.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from native_drivers import compile_driver
from mtp_edge.runtime.draft_policy import (
    AcceptanceEstimate,
    CostTable,
    CostTableError,
    DraftPolicy,
    DraftPolicyError,
    best_plan,
    choose_k,
    expected_tokens,
)



# --- choose_k against a brute force ------------------------------------------------------------


def brute_force_rates(costs: CostTable, acceptance, max_k: int) -> list[Fraction]:
    """Exact expected tokens per second for k = 0..max_k, E(k) by enumerating how many drafts survive."""
    a = [Fraction(x) for x in acceptance]
    out = []
    for k in range(max_k + 1):
        tokens = Fraction(0)
        for m in range(k + 1):  # exactly m accepted: 1..m accepted, then m + 1 rejected unless m = k
            p = Fraction(1)
            for i in range(m):
                p *= a[i]
            if m < k:
                p *= 1 - a[m]
            tokens += p * (m + 1)
        if k == 0:
            seconds = Fraction(costs.decode)
        else:
            draft = k * Fraction(costs.draft_step)
            if k in costs.draft_call:
                draft = min(draft, Fraction(costs.draft_call[k]))
            seconds = draft + Fraction(costs.verify[k + 1])
        out.append(tokens / seconds)
    return out


@st.composite
def grid_cases(draw):
    """Tables and acceptances on a coarse dyadic grid: the float arithmetic is exact and ties are common."""
    K = draw(st.integers(0, 6))
    eighths = st.integers(1, 32).map(lambda n: n / 8)
    costs = CostTable(
        decode=draw(eighths),
        draft_step=draw(st.integers(0, 8).map(lambda n: n / 16)),
        verify={n: draw(eighths) for n in range(2, K + 2)},
        draft_call={k: draw(eighths) for k in range(1, K + 1) if draw(st.booleans())},
    )
    acceptance = [draw(st.integers(0, 4).map(lambda n: n / 4)) for _ in range(K)]
    return costs, acceptance, draw(st.integers(0, K))


@st.composite
def float_cases(draw):
    K = draw(st.integers(0, 8))
    seconds = st.floats(1e-4, 10.0)
    costs = CostTable(
        decode=draw(seconds),
        draft_step=draw(st.floats(0.0, 1.0)),
        verify={n: draw(seconds) for n in range(2, K + 2)},
        draft_call={k: draw(seconds) for k in range(1, K + 1) if draw(st.booleans())},
    )
    acceptance = [draw(st.floats(0.0, 1.0)) for _ in range(K)]
    return costs, acceptance, draw(st.integers(0, K))


@settings(max_examples=400, deadline=None)
@given(grid_cases())
def test_choose_k_is_the_brute_force_argmax_with_ties_to_the_smaller_k(case):
    costs, acceptance, max_k = case
    rates = brute_force_rates(costs, acceptance, max_k)
    best = max(rates)
    assert choose_k(costs, acceptance, max_k) == rates.index(best)  # index(): the first, smallest k


@settings(max_examples=300, deadline=None)
@given(float_cases())
def test_choose_k_is_within_rounding_of_the_brute_force_best(case):
    costs, acceptance, max_k = case
    rates = brute_force_rates(costs, acceptance, max_k)
    plan = best_plan(costs, acceptance, max_k)
    assert rates[plan.k] >= max(rates) * (1 - Fraction(1, 10**12))
    if plan.k:
        via_call = plan.k in costs.draft_call and costs.draft_call[plan.k] < plan.k * costs.draft_step
        assert plan.draft_mode == ("call" if via_call else "steps")
    assert plan.tokens == expected_tokens(acceptance, plan.k)
    assert math.isclose(plan.tokens, float(rates[plan.k] * Fraction(plan.seconds)), rel_tol=1e-12)


def test_expected_tokens_formula():
    assert expected_tokens([], 0) == 1.0
    assert expected_tokens([0.5, 0.5, 0.5], 3) == 1 + 0.5 + 0.25 + 0.125
    assert expected_tokens([1.0] * 4, 4) == 5.0
    assert expected_tokens([0.0, 1.0], 2) == 1.0
    assert expected_tokens([0.8, 0.5], 1) == 1.8  # only the first k positions count


def test_plain_decoding_when_verify_is_expensive_and_acceptance_low_drafting_when_cheap():
    low = [0.1] * 4
    high = [0.9] * 4
    expensive = CostTable(decode=1.0, draft_step=0.2, verify={n: 1.0 + 0.5 * n for n in range(2, 6)})
    cheap = CostTable(decode=1.0, draft_step=0.02, verify={n: 1.0 + 0.02 * n for n in range(2, 6)})
    assert choose_k(expensive, low, 4) == 0
    assert choose_k(expensive, high, 4) == 0  # verifying 2+ tokens costs more than the drafts bring
    assert choose_k(cheap, low, 4) == 1
    assert choose_k(cheap, high, 4) == 4
    assert choose_k(cheap, high, 2) == 2  # max_k caps it
    # A fused k-token drafter call is used where it beats k steps.
    fused = CostTable(decode=1.0, draft_step=0.2, verify={2: 1.05, 3: 1.1}, draft_call={2: 0.05})
    plan = best_plan(fused, high, 2)
    assert (plan.k, plan.draft_mode) == (2, "call")
    assert plan.seconds == 0.05 + 1.1


def test_choose_k_rejects_what_it_cannot_use():
    costs = CostTable(decode=1.0, draft_step=0.1, verify={2: 1.1})
    with pytest.raises(DraftPolicyError, match="max_k = 2"):
        choose_k(costs, [0.5, 0.5], 2)
    with pytest.raises(DraftPolicyError, match=r"acceptance\[1\]"):
        choose_k(costs, [float("nan")], 1)
    with pytest.raises(DraftPolicyError, match=r"acceptance\[1\]"):
        choose_k(costs, [1.5], 1)


# --- acceptance estimate ----------------------------------------------------------------------


def test_a_round_accepts_its_prefix_rejects_the_next_and_leaves_the_rest_unobserved():
    est = AcceptanceEstimate(4, decay=1.0).observed(3, 1)
    assert est.accepted == (1.0, 0.0, 0.0, 0.0)
    assert est.rejected == (0.0, 1.0, 0.0, 0.0)
    # Positions 3 and 4 were never judged: each takes the rate of the position before as its prior mean.
    a2 = (2 * (2 / 3)) / 3  # prior mean a1 = 2/3 with weight 2, then one rejection: 4/9
    assert est.rates() == (2 / 3, a2, a2, a2)
    full = AcceptanceEstimate(4, decay=1.0).observed(2, 2)  # all accepted: nothing rejected
    assert full.accepted == (1.0, 1.0, 0.0, 0.0) and full.rejected == (0.0,) * 4
    with pytest.raises(DraftPolicyError, match="accepted of"):
        AcceptanceEstimate(4).observed(2, 3)
    with pytest.raises(DraftPolicyError, match="<= 4"):
        AcceptanceEstimate(4).observed(5, 0)


def test_decay_makes_old_rounds_matter_less():
    est = AcceptanceEstimate(1, decay=0.5).observed(1, 1)
    for n in range(1, 6):
        est = est.observed(1, 0)
        assert est.accepted[0] == 0.5**n  # the accepted round is n rounds old
    assert est.observed(0, 0) == est  # a plain round carries no news about the drafter: no aging

    def history(decay):  # 20 rejections long ago, then 5 acceptances
        e = AcceptanceEstimate(1, decay=decay)
        for _ in range(20):
            e = e.observed(1, 0)
        for _ in range(5):
            e = e.observed(1, 1)
        return e.rates()[0]

    assert history(1.0) == pytest.approx(6 / 27)
    assert history(1.0) < history(0.9) < history(0.5) < 6 / 7  # Beta(1, 1) prior: at most (1 + 5) / (2 + 5)


# --- the policy -------------------------------------------------------------------------------


def test_probes_turn_drafting_back_on_after_acceptance_improves():
    # Drafting pays once a_1 > 0.15: (1 + a_1) / (1 + 0.05 + 0.1) > 1 / 1.
    costs = CostTable(decode=1.0, draft_step=0.05, verify={n: 1.0 + 0.05 * n for n in range(2, 6)})
    for probe_every in (8, 0):
        policy = DraftPolicy(costs, probe_every=probe_every, probe_k=2)
        while (k := policy.next_k()) > 0:  # a drafter that fails everything switches drafting off
            policy.observe(k, 0)
        assert policy.stats()["plain_rounds"] == 1

        plans = []
        for _ in range(100):  # the drafter now gets everything right
            plan = policy.next_plan()
            plans.append(plan)
            policy.observe(plan.k, plan.k)
        if probe_every == 0:
            assert all(p.k == 0 for p in plans)  # nothing measured, nothing learned
            continue
        probes = [i for i, p in enumerate(plans) if p.probe]
        assert probes[0] == probe_every - 1  # the first round above was plain already
        assert all(p.k == 2 for p in plans if p.probe)
        on = next(i for i, p in enumerate(plans) if p.k > 0 and not p.probe)
        assert on < 5 * (probe_every + 1)
        assert plans[-1].k == 4 and not plans[-1].probe
        assert policy.stats()["probe_rounds"] == len(probes)


def test_probing_carries_over_from_an_earlier_generation():
    """A reply of a chat starts its probing where the last one on the backend ended: while drafting
    does not pay, the wait between probes keeps doubling instead of restarting at probe_every."""
    costs = CostTable(decode=1.0, draft_step=0.5, verify={2: 3.0, 3: 4.0})
    first = DraftPolicy(costs, probe_every=3, probe_k=1)
    for _ in range(40):
        first.next_k()
    assert first.stats()["probe_rounds"] == 3 and first.probing == (24, 16)  # waits of 3, 6, 12; now 24
    fresh, carried = DraftPolicy(costs, probe_every=3, probe_k=1), DraftPolicy(costs, probe_every=3, probe_k=1, probing=first.probing)
    assert [fresh.next_k() for _ in range(4)] == [0, 0, 0, 1]
    assert [carried.next_k() for _ in range(9)] == [0] * 8 + [1]  # 16 plain rounds so far: the probe after 24
    assert DraftPolicy(costs, probe_every=3, probing=(10_000, 0)).probing == (48, 0)  # at most MAX_PROBE_BACKOFF x probe_every
    with pytest.raises(DraftPolicyError, match="probing"):
        DraftPolicy(costs, probing=(-1, 0))


def test_policy_stats_count_rounds():
    costs = CostTable(decode=1.0, draft_step=0.5, verify={2: 3.0, 3: 4.0})
    policy = DraftPolicy(costs, probe_every=3, probe_k=1)
    ks = [policy.next_k() for _ in range(12)]
    assert ks == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0]  # a probe that loses doubles the wait for the next
    stats = policy.stats()
    assert stats["rounds"] == 12
    assert stats["k_histogram"] == {0: 10, 1: 2}
    assert stats["plain_rounds"] == 10 and stats["probe_rounds"] == 2
    assert CostTable.from_json(stats["costs"]) == costs
    json.dumps(stats)  # ready for a log line


def test_live_timings_move_the_costs_unless_frozen():
    costs = CostTable(decode=1.0, draft_step=0.01, verify={2: 1.02, 3: 1.03})
    live, frozen = DraftPolicy(costs, timing_weight=0.5), DraftPolicy(costs, frozen=True)
    assert live.next_k() == frozen.next_k() == 2
    for policy in (live, frozen):
        for _ in range(20):  # the device turns out to verify slowly
            policy.observe_call("verify", 3, 10.0)
            policy.observe_call("verify", 2, 10.0)
            policy.observe_call("draft_step", 2, 0.02)
    assert frozen.costs == costs and frozen.next_k() == 2
    assert live.costs.verify[3] == pytest.approx(10.0, rel=1e-5) and live.next_k() == 0


def test_measured_is_an_exponential_moving_average():
    costs = CostTable(decode=1.0, draft_step=0.1, verify={2: 2.0})
    assert costs.measured("decode", 1, 2.0, 0.25).decode == 1.25
    assert costs.measured("verify", 1, 2.0, 0.25).decode == 1.25  # a k = 0 round verifies 1 token
    # A stall counts as twice the entry: one slow call moves it by weight x 2 at most...
    assert costs.measured("decode", 1, 50.0, 0.25).decode == 1.25
    assert costs.measured("decode", 1, 0.5, 0.25).decode == 0.875  # (faster calls count in full)
    # ...and a cost that really grew still gets there, call by call.
    grown = costs
    for _ in range(60):
        grown = grown.measured("decode", 1, 10.0, 0.25)
    assert 9.9 < grown.decode <= 10.0
    assert costs.measured("verify", 2, 4.0, 0.5).verify[2] == 3.0
    assert costs.measured("draft_step", 4, 0.8, 1.0).draft_step == 0.2  # 4 steps timed together
    seeded = costs.measured("draft_call", 1, 0.05, 0.1)  # the first timing of a call length seeds it
    assert seeded.draft_call == {1: 0.05}
    assert costs == CostTable(decode=1.0, draft_step=0.1, verify={2: 2.0})  # tables are values
    for args, match in [
        (("verify", 3, 1.0, 0.1), r"verify\[3\]"),
        (("draft_call", 2, 1.0, 0.1), r"draft_call\[2\]"),
        (("decode", 2, 1.0, 0.1), "1 token"),
        (("prefill", 1, 1.0, 0.1), "unknown call"),
        (("decode", 1, -1.0, 0.1), "finite number >= 0"),
        (("decode", 1, float("nan"), 0.1), "finite number >= 0"),
        (("decode", 1, 1.0, 0.0), "weight"),
    ]:
        with pytest.raises(DraftPolicyError, match=match):
            costs.measured(*args)


# --- JSON -------------------------------------------------------------------------------------


def test_cost_table_json_round_trip():
    costs = CostTable(decode=0.031, draft_step=0.004, verify={2: 0.033, 3: 0.036, 4: 0.041}, draft_call={3: 0.009})
    data = json.loads(json.dumps(costs.to_json()))
    assert data == {
        "decode": 0.031,
        "draft_step": 0.004,
        "verify": {"2": 0.033, "3": 0.036, "4": 0.041},
        "draft_call": {"3": 0.009},
    }
    back = CostTable.from_json(data)
    assert back == costs and back.max_k == 3
    assert CostTable.from_json({"decode": 1, "draft_step": 0, "verify": {}}).max_k == 0  # target only


@pytest.mark.parametrize(
    "change, match",
    [
        ({"decode": -0.1}, r"decode is -0.1 seconds"),
        ({"decode": 0}, r"decode is 0.0 seconds; it must be a finite number > 0"),
        ({"draft_step": float("nan")}, r"draft_step is nan"),
        ({"draft_step": "fast"}, r"draft_step must be a number"),
        ({"verify": {"2": 1.0, "4": 1.2}}, r"verify is missing length\(s\) 3: give seconds for every length 2..4"),
        ({"verify": {"3": 1.0}}, r"verify is missing length\(s\) 2"),
        ({"verify": {"1": 1.0, "2": 1.0}}, r"verify\[1\] is out of range"),
        ({"verify": {"2": 1.0, "3": float("inf")}}, r"verify\[3\] is inf"),
        ({"verify": {"two": 1.0}}, r"verify has the key 'two'"),
        ({"verify": [1.0, 1.1]}, r"verify must be an object"),
        ({"draft_call": {"5": 0.1}}, r"draft_call\[5\] is out of range; lengths are 1..3"),
        ({"draft_call": {"2": -1}}, r"draft_call\[2\] is -1.0 seconds"),
        ({"verfiy": {}}, r"unknown field\(s\) 'verfiy'"),
    ],
)
def test_malformed_cost_tables_name_the_field(change, match):
    data = {"decode": 1.0, "draft_step": 0.1, "verify": {"2": 1.1, "3": 1.2, "4": 1.3}, **change}
    with pytest.raises(CostTableError, match=match) as caught:
        CostTable.from_json(data)
    assert isinstance(caught.value, ValueError)


def test_missing_fields_are_named():
    with pytest.raises(CostTableError, match="missing field\\(s\\) draft_step, verify"):
        CostTable.from_json({"decode": 1.0})
    with pytest.raises(CostTableError, match="expected a JSON object"):
        CostTable.from_json([1.0])


# --- the C++ port -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    return compile_driver(tmp_path_factory.mktemp("draft_policy"), "draft_policy_driver", "draft_policy.cpp")


def run_driver(exe: Path, lines: list[str]) -> list[str]:
    stdin = "\n".join(lines) + "\n"
    done = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.splitlines()


def scenario(rng: random.Random) -> tuple[list[str], list[tuple]]:
    """Driver commands for one random run of the policy, and the plans the Python module makes on it."""
    grid = rng.random() < 0.3  # coarse values: exact ties, where only the tie-break decides
    K = rng.randint(0, 6)

    def seconds(low, high):
        return rng.randint(1, 16) / 8 if grid else rng.uniform(low, high)

    if grid or rng.random() < 0.3:  # anything goes
        decode, step = seconds(0.5, 2.0), rng.randint(0, 4) / 16 if grid else rng.uniform(0.0, 0.3)
        verify = {n: seconds(0.5, 2.5) for n in range(2, K + 2)}
    else:  # a device: verify grows slowly with n, a drafter step is a fraction of a target call
        decode, growth, step = rng.uniform(0.5, 2.0), rng.uniform(0.0, 0.2), rng.uniform(0.0, 0.2)
        verify = {n: decode * (1 + growth * (n - 1)) for n in range(2, K + 2)}
        step *= decode
    draft_call = {k: seconds(0.0, 1.0) for k in range(1, K + 1) if rng.random() < 0.3}
    costs = CostTable(decode=decode, draft_step=step, verify=verify, draft_call=draft_call)
    max_k = rng.randint(0, K)
    pa, pr = (rng.randint(1, 8) / 4, rng.randint(1, 8) / 4) if grid else (rng.uniform(0.2, 3), rng.uniform(0.2, 3))
    decay = rng.choice([1.0, 0.5, 0.75, rng.uniform(0.5, 1.0)])
    probe_every, probe_k = rng.randint(0, 5), rng.randint(1, 3)
    weight, frozen = rng.choice([1.0, rng.uniform(0.01, 1.0)]), rng.random() < 0.3
    margin = rng.choice([0.0, 0.05, rng.uniform(0.0, 0.3)])
    stickiness = rng.choice([0.0, 0.05, rng.uniform(0.0, 0.3)])

    # Probing carried over from an earlier generation (tuning.remember), or fresh.
    probing = (rng.randint(0, 100), rng.randint(0, 100)) if rng.random() < 0.3 else None

    h = float.hex
    lines = [" ".join(["costs", h(costs.decode), h(costs.draft_step), *map(h, costs.verify.values())])]
    lines += [f"call {k} {h(s)}" for k, s in costs.draft_call.items()]
    lines.append(f"policy {max_k} {h(pa)} {h(pr)} {h(decay)} {probe_every} {probe_k} {h(weight)} {int(frozen)} {h(margin)} {h(stickiness)}"
                 + ("" if probing is None else f" {probing[0]} {probing[1]}"))
    policy = DraftPolicy(
        costs,
        max_k,
        acceptance=AcceptanceEstimate(max_k, pa, pr, decay),
        probe_every=probe_every,
        probe_k=probe_k,
        timing_weight=weight,
        frozen=frozen,
        margin=margin,
        stickiness=stickiness,
        probing=probing,
    )

    def drafter():
        return [rng.random() ** 0.3 for _ in range(max_k)]  # mostly good, as MTP drafters are

    truth = drafter()  # the drafter's real conditional acceptance...
    expected = []
    for round_ in range(40):
        if round_ == 20:
            truth = drafter()  # ...which changes halfway
        lines.append("next")
        plan = policy.next_plan()
        expected.append((plan.k, plan.draft_mode, int(plan.probe), plan.tokens, plan.seconds))
        drafted = rng.randint(0, plan.k) if rng.random() < 0.2 else plan.k  # the loop may shrink k
        accepted = 0
        while accepted < drafted and rng.random() < truth[accepted]:
            accepted += 1
        lines.append(f"observe {drafted} {accepted}")
        policy.observe(drafted, accepted)
        if rng.random() < 0.5:
            timings = [("verify", drafted + 1, rng.uniform(0.5, 3.0))]
            if drafted:
                timings.append(("draft_step", drafted, rng.uniform(0.0, 0.5)))
            if drafted and rng.random() < 0.3:
                timings.append(("draft_call", drafted, rng.uniform(0.0, 1.0)))
            for method, n, s in timings:
                lines.append(f"time {method} {n} {h(s)}")
                policy.observe_call(method, n, s)
    return lines, expected


def test_cpp_port_makes_the_same_choices(driver):
    rng = random.Random(19)
    lines, expected = [], []
    for _ in range(300):
        more_lines, more_expected = scenario(rng)
        lines += more_lines
        expected += more_expected
    out = run_driver(driver, lines)
    assert len(out) == len(expected)
    ks = set()
    for i, (line, want) in enumerate(zip(out, expected)):
        k, mode, probe, tokens, seconds = line.split()
        got = (int(k), mode, int(probe), float.fromhex(tokens), float.fromhex(seconds))
        assert got == want, f"plan {i}: C++ {got}, Python {want}"
        ks.add(got[0])
    assert ks == set(range(7))  # the scenarios reach every k
    assert sum(w[2] for w in expected) > 50  # and plenty of probes


def test_cpp_port_breaks_ties_the_same_way(driver):
    """Grid tables and rates, where exact ties between k are common (a rate of 0 or 1, equal costs)."""
    rng = random.Random(7)
    lines, expected, ties = [], [], 0
    for _ in range(400):
        K = rng.randint(1, 6)
        costs = CostTable(
            decode=rng.randint(1, 4) / 4,
            draft_step=rng.choice([0.0, 0.25]),
            verify={n: rng.randint(2, 4) / 4 for n in range(2, K + 2)},
            draft_call={k: rng.randint(0, 4) / 4 for k in range(1, K + 1) if rng.random() < 0.2},
        )
        rates = [rng.choice([0.0, 0.5, 1.0]) for _ in range(K)]
        max_k = rng.randint(0, K)
        lines.append(" ".join(["costs", *map(float.hex, [costs.decode, costs.draft_step, *costs.verify.values()])]))
        lines += [f"call {k} {s.hex()}" for k, s in costs.draft_call.items()]
        lines.append(" ".join(["plan", str(max_k), *map(float.hex, rates)]))
        plan = best_plan(costs, rates, max_k)
        expected.append(f"{plan.k} {plan.draft_mode} 0 {plan.tokens.hex()} {plan.seconds.hex()}")
        exact = brute_force_rates(costs, rates, max_k)
        ties += exact.count(max(exact)) > 1
    out = run_driver(driver, lines)
    got = [" ".join([k, mode, probe, float.fromhex(t).hex(), float.fromhex(s).hex()])
           for k, mode, probe, t, s in map(str.split, out)]
    assert got == expected
    assert ties > 50


def test_cpp_port_reports_malformed_tables(driver):
    out = run_driver(
        driver,
        [
            "costs 1 0 1 -1",
            "policy -1 1 1 1 1 1 1 0 0 0",
            "costs 1 0 1",
            "call 2 0.1",
            "policy -1 1 1 1 1 1 1 0 0 0",
            "costs 1 0 1 1",
            "policy -1 1 1 1 1 1 1 0 0 0",
            "observe 3 0",
        ],
    )
    assert out == [
        "error cost table: verify[3] is -1 seconds; it must be a finite number > 0.",
        "error cost table: draft_call[2] is out of range; lengths are 1..1.",
        "error a round reports 0 accepted of 3 drafted; need 0 <= accepted <= drafted <= 2.",
    ]


def test_draft_lengths_are_sticky_until_another_beats_them_by_the_stickiness():
    """Near-ties between draft lengths keep the previous k (switching costs a re-planned verify and
    another draft method); a clear winner still takes over, and stickiness=0 is best_plan alone."""
    costs = CostTable(decode=1.0, draft_step=0.05, verify={2: 1.1, 3: 1.2, 4: 1.3})

    def policy(rates, stickiness):
        p = DraftPolicy(costs, 3, acceptance=AcceptanceEstimate(3, accepted=tuple(100 * a for a in rates),
                                                                    rejected=tuple(100 * (1 - a) for a in rates)),
                        stickiness=stickiness, probe_every=0)
        return p

    def rate(rates, k):
        seconds, _ = costs.round_seconds(k)
        return expected_tokens(AcceptanceEstimate(3, accepted=tuple(100 * a for a in rates),
                                                  rejected=tuple(100 * (1 - a) for a in rates)).rates(), k) / seconds

    p = policy([0.8, 0.6, 0.5], 0.05)
    first = p.next_k()
    assert first == choose_k(costs, p.acceptance, 3, 0.05)
    # Shift the estimate until best_plan alone would pick another k by less than 5%: the policy keeps k.
    nudged = None
    for a2 in [x / 100 for x in range(40, 100)]:
        rates = [0.8, a2, 0.5]
        alone = best_plan(costs, AcceptanceEstimate(3, accepted=tuple(100 * a for a in rates),
                                                    rejected=tuple(100 * (1 - a) for a in rates)), 3, 0.05).k
        if alone != first and rate(rates, alone) <= rate(rates, first) * 1.05:
            nudged = rates
            break
    assert nudged is not None
    sticky, loose = policy(nudged, 0.05), policy(nudged, 0.0)
    sticky.last_k = loose.last_k = first
    assert sticky.next_k() == first
    assert loose.next_k() != first
    # A clear winner (the estimate moved a long way) takes over despite the stickiness.
    far = policy([0.8, 0.99, 0.99], 0.05)
    far.last_k = 1
    assert far.next_k() == choose_k(costs, far.acceptance, 3, 0.05) != 1
    with pytest.raises(DraftPolicyError, match="stickiness must be a finite number >= 0"):
        DraftPolicy(costs, 3, stickiness=-0.1)


def test_drafting_starts_past_the_margin_and_stops_below_plain():
    """Hysteresis between drafting and plain decoding: k = 1 must beat plain by the margin to start,
    and once chosen on merit goes on while it predicts at least plain's rate; a probe never holds."""
    costs = CostTable(decode=1.0, draft_step=0.1, verify={2: 1.2})  # k = 1 rate: (1 + a) / 1.3

    def policy(a: float, **kwargs) -> DraftPolicy:
        estimate = AcceptanceEstimate(1, accepted=(1000 * a,), rejected=(1000 * (1 - a),))
        return DraftPolicy(costs, acceptance=estimate, margin=0.05, **kwargs)

    assert policy(0.40, probe_every=0).next_k() == 1  # 1.077x plain: past the margin
    between = policy(0.33, probe_every=0)  # 1.023x: within the margin
    assert between.next_k() == 0
    between.last_k = 1  # ...but it was drafting on merit: it goes on
    assert between.next_k() == 1 and between.next_k() == 1
    below = policy(0.28, probe_every=0)  # 0.985x: plain wins
    below.last_k = 1
    assert below.next_k() == 0
    probed = policy(0.33, probe_every=1, probe_k=1)
    assert [probed.next_plan().probe for _ in range(2)] == [False, True]
    assert probed.next_k() == 0  # the probe's k does not hold, though it is within the margin


def test_a_live_generation_leaves_its_probing_to_the_next_on_the_same_backend(backend_for):
    from mtp_edge.runtime import tuning
    from mtp_edge.runtime.sampling import SamplingConfig
    from mtp_edge.runtime.speculative import generate

    backend = backend_for(64)
    first = generate(backend, [1, 5, 9], k="auto", max_new_tokens=20)
    policy, _ = tuning.make_policy(backend, backend.max_draft)
    assert first.stats.policy is not None and policy.probing == tuning._probing[backend]
    assert policy.acceptance == tuning._acceptance[backend]
    # A seeded rejection-rule run must repeat: it starts from a fresh, frozen policy.
    frozen, _ = tuning.make_policy(backend, backend.max_draft, frozen=True)
    assert frozen.probing == (frozen.probe_every, 0)
    seeded = SamplingConfig(temperature=0.8, seed=3)
    runs = [generate(backend, [1, 5, 9], k="auto", max_new_tokens=20, sampling=seeded).tokens for _ in range(2)]
    assert runs[0] == runs[1]
