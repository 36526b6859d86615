"""Drafter-invariant sampling (Gumbel-max coupling) in runtime/sampling.py and its C++ port.

The noise is a counter-based hash of (seed, absolute position, token id); the target's token is
argmax(processed score + noise), the drafter drafts with the same noise, a draft stands iff it
equals the target's token. Checked here: the noise (SplitMix64 stream, uniformity, independence,
exact portable log), the marginal distribution of coupled_choose (chi-square against
probabilities()), coupling strength, the invariance of a seeded run's tokens to K / policy /
drafter through a small speculative loop, and bit-for-bit parity with android_demo/native.
"""

from __future__ import annotations

import math
import random
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare, kstest

from native_drivers import compile_driver
from mtp_edge.runtime.backend import DraftOutput
from mtp_edge.runtime.errors import GenerationError
from mtp_edge.runtime.sampling import (
    GUMBEL_HIGH,
    GUMBEL_LOW,
    MASK64,
    SamplingConfig,
    SplitMix64,
    bits_to_uniform,
    coupled_accept,
    coupled_choose,
    coupled_draft,
    coupled_scores,
    gumbel_argmax,
    gumbel_noise,
    noise_bits,
    noise_row_key,
    portable_log,
    probabilities,
)

ALPHA = 0.001


# --- the noise ------------------------------------------------------------------------------------


def test_noise_is_the_splitmix64_stream_of_a_row_key():
    gamma = 0x9E3779B97F4A7C15
    for seed, position in [(0, 0), (1, 5), (MASK64, 1 << 40), (12345, 262143)]:
        # SplitMix64(state).next_u64() is mix(state + GAMMA): row_key = mix(mix(seed + GAMMA) ^ position).
        first = SplitMix64(seed).next_u64()
        key = SplitMix64(((first ^ position) - gamma) & MASK64).next_u64()
        assert noise_row_key(seed, position) == key
        stream = SplitMix64(key)  # token t's bits are draw t of SplitMix64(row_key)
        draws = [stream.next_u64() for _ in range(40)]
        assert [int(b) for b in noise_bits(seed, position, list(range(40)))] == draws


def test_noise_is_deterministic_and_per_token():
    ids = torch.tensor([7, 3, 262143, 0, 3])
    g = gumbel_noise(11, 42, ids)
    assert g.dtype == torch.float64 and g.shape == (5,)
    assert torch.equal(g, gumbel_noise(11, 42, ids))
    assert g[1] == g[4]  # the same token, the same noise
    # A token's noise does not depend on which other tokens are asked for, or in what order.
    assert torch.equal(g[[2, 0]], gumbel_noise(11, 42, [262143, 7]))
    assert torch.equal(gumbel_noise(11, 42, np.array([3])), g[1:2])
    row = gumbel_noise(11, 42, torch.arange(1000))
    for other in [gumbel_noise(11, 43, torch.arange(1000)), gumbel_noise(12, 42, torch.arange(1000)),
                  gumbel_noise(11, 42, torch.arange(1, 1001))]:
        assert (row != other).float().mean() > 0.99  # different positions, seeds, tokens: different rows
    with pytest.raises(GenerationError):
        gumbel_noise(0, -1, [0])
    with pytest.raises(GenerationError):
        gumbel_noise(0, 0, [-1])


def test_uniforms_are_strictly_inside_the_unit_interval():
    extremes = bits_to_uniform(np.array([0, MASK64, 1 << 63], dtype=np.uint64))
    assert extremes.tolist() == [2.0**-53, 1 - 2.0**-53, 0.5 + 2.0**-53]
    g = -portable_log(-portable_log(extremes[:2]))
    assert GUMBEL_LOW < g[0] < -3.6 and 36.7 < g[1] < GUMBEL_HIGH  # the range gumbel_argmax prunes by


def test_uniforms_and_gumbels_pass_ks():
    rows = [(seed, position) for seed in (0, 1, 2**63 + 5) for position in (0, 1, 999, 2**33)]
    u = np.concatenate([bits_to_uniform(noise_bits(s, p, np.arange(20_000))) for s, p in rows])
    assert u.min() > 0.0 and u.max() < 1.0
    assert kstest(u, "uniform").pvalue > ALPHA
    g = torch.cat([gumbel_noise(s, p, torch.arange(20_000)) for s, p in rows]).numpy()
    assert kstest(g, "gumbel_r").pvalue > ALPHA
    for s, p in rows[:4]:  # every single row too
        assert kstest(bits_to_uniform(noise_bits(s, p, np.arange(20_000))), "uniform").pvalue > ALPHA


def test_neighbouring_rows_and_tokens_are_independent():
    n = 50_000
    ids = np.arange(n)
    base = bits_to_uniform(noise_bits(3, 100, ids))
    neighbours = {
        "next position": bits_to_uniform(noise_bits(3, 101, ids)),
        "next seed": bits_to_uniform(noise_bits(4, 100, ids)),
        "next token": bits_to_uniform(noise_bits(3, 100, ids + 1)),
        "seed+1, position-1": bits_to_uniform(noise_bits(4, 99, ids)),
    }
    for name, other in neighbours.items():
        assert abs(np.corrcoef(base, other)[0, 1]) < 5 / math.sqrt(n), name
        # joint uniformity on a 10 x 10 grid
        cells = (np.floor(base * 10) * 10 + np.floor(other * 10)).astype(int)
        counts = np.bincount(cells, minlength=100)
        assert chisquare(counts).pvalue > ALPHA, name


def test_portable_log_is_within_an_ulp_of_libm():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.random(50_000), rng.random(50_000) * 40, np.exp(rng.uniform(-700, 700, 50_000)),
                        1 - rng.random(5_000) * 1e-10, 1 + rng.random(5_000) * 1e-10,
                        [2.0**-53, 1 - 2.0**-53, 0.5, 1.0, 2.0, math.sqrt(2), math.sqrt(0.5), math.e]])
    got = portable_log(x)
    ref = np.array([math.log(v) for v in x])
    assert np.all(np.abs(got - ref) <= np.spacing(np.abs(ref)))
    assert portable_log(np.array([1.0]))[0] == 0.0 and portable_log(np.array([2.0]))[0] == math.log(2.0)


# --- coupled choice ---------------------------------------------------------------------------------


def brute_force(scores: torch.Tensor, ids: torch.Tensor, seed: int, position: int) -> int:
    """The definition: the full argmax of score + noise over every id, ties to the lowest id."""
    total = scores.double() + gumbel_noise(seed, position, ids)
    return int(ids[total == total.max()].min())


def test_gumbel_argmax_equals_the_full_argmax():
    rng = random.Random(0)
    for case in range(200):
        n = rng.choice([1, 2, 5, 50, 2000])
        scale = rng.choice([0.01, 1.0, 5.0, 30.0, 300.0])
        scores = torch.randn(n, generator=torch.Generator().manual_seed(case), dtype=torch.float64) * scale
        if rng.random() < 0.3:
            scores[torch.rand(n, generator=torch.Generator().manual_seed(case + 1)) < 0.5] = float("-inf")
            scores[rng.randrange(n)] = 0.0
        ids = torch.randperm(300_000, generator=torch.Generator().manual_seed(case))[:n]
        seed, position = rng.getrandbits(64), rng.randrange(1 << 40)
        assert gumbel_argmax(scores, ids, seed, position) == brute_force(scores, ids, seed, position)


def test_ties_go_to_the_lowest_id():
    seed, position = 9, 4
    g = gumbel_noise(seed, position, [10, 3])
    scores = torch.tensor([0.0, float(g[0] - g[1])], dtype=torch.float64)
    assert scores[1] + g[1] == scores[0] + g[0]  # an exact tie between ids 10 and 3
    assert gumbel_argmax(scores, torch.tensor([10, 3]), seed, position) == 3
    assert gumbel_argmax(scores.flip(0), torch.tensor([3, 10]), seed, position) == 3  # either order


def test_greedy_is_unchanged():
    logits = torch.randn(100, generator=torch.Generator().manual_seed(0))
    cfg = SamplingConfig()
    assert all(coupled_choose(logits, cfg, s, p) == int(torch.argmax(logits)) for s in range(3) for p in range(3))
    out = DraftOutput(torch.tensor([5, 9, 2]), torch.tensor([0.1, 0.3, 0.2]), torch.zeros(4), argmax_id=9)
    assert coupled_draft(out, cfg, 1, 2) == 9
    assert coupled_accept([int(torch.argmax(logits))], logits.repeat(2, 1), cfg, 0, 5) == (1, int(torch.argmax(logits)))


MARGINAL_CONFIGS = [
    SamplingConfig(temperature=1.0),
    SamplingConfig(temperature=0.7, top_k=4),
    SamplingConfig(temperature=1.3, top_k=5, top_p=0.8),
]


@pytest.mark.parametrize("cfg", MARGINAL_CONFIGS, ids=["T1", "T0.7-k4", "T1.3-k5-p0.8"])
def test_coupled_choose_is_distributed_as_the_processed_target(cfg):
    vocab, draws = 7, 3_000
    logits = torch.tensor([1.2, -0.3, 0.8, 2.0, -1.5, 0.0, 0.9])
    p = probabilities(logits, cfg).numpy()
    rng = random.Random(1)
    counts = np.zeros(vocab)
    for _ in range(draws):  # fresh noise each draw: a random seed and position
        counts[coupled_choose(logits, cfg, rng.getrandbits(64), rng.randrange(1 << 20))] += 1
    assert counts[p == 0].sum() == 0, "a token removed by top-k / top-p was chosen"
    support = p > 0
    assert chisquare(counts[support], p[support] / p[support].sum() * draws).pvalue > ALPHA


def test_same_noise_makes_close_drafters_agree():
    """A drafter that is closer to the target matches its token more often, at least (1 - TV) / (1 + TV)."""
    vocab, draws = 20, 1_000
    target = torch.randn(vocab, generator=torch.Generator().manual_seed(0)) * 2
    noise = torch.randn(vocab, generator=torch.Generator().manual_seed(1))
    cfg = SamplingConfig(temperature=1.0)
    ids = torch.arange(vocab)
    chosen = [coupled_choose(target, cfg, seed, 3) for seed in range(draws)]
    rates = []
    for eps in [0.0, 0.3, 1.0, 3.0]:
        drafter = target + eps * noise
        matches = sum(coupled_draft(DraftOutput(ids, drafter, torch.zeros(1)), cfg, seed, 3) == chosen[seed]
                      for seed in range(draws))
        rate = matches / draws
        tv = 0.5 * float((probabilities(target, cfg) - probabilities(drafter, cfg)).abs().sum())
        assert rate >= (1 - tv) / (1 + tv) - 4 * math.sqrt(0.25 / draws), (eps, rate, tv)
        rates.append(rate)
    assert rates[0] == 1.0  # the same distribution and the same noise: always the same token
    assert rates == sorted(rates, reverse=True) and rates[-1] < 0.9


# --- the invariance: a speculative loop emits what the target alone samples -------------------------


def _logits(prefix: list[int], salt: int, vocab: int, scale: float) -> torch.Tensor:
    key = zlib.crc32(np.array([salt, *prefix], dtype=np.int64).tobytes())
    return torch.randn(vocab, generator=torch.Generator().manual_seed(key)) * scale


class ToyPair:
    """A random target and a drafter that roughly follows it, both as functions of the prefix."""

    def __init__(self, vocab: int, closeness: float, partial: bool):
        self.vocab, self.closeness, self.partial = vocab, closeness, partial

    def target(self, prefix):
        return _logits(prefix, 1, self.vocab, 2.0)

    def draft(self, prefix) -> DraftOutput:
        logits = self.closeness * self.target(prefix) + _logits(prefix, 2, self.vocab, 1.0)
        ids = torch.arange(self.vocab)
        if self.partial:  # a clustered head scores a subset, sometimes without the target's token
            keep = (ids + prefix[-1]) % 3 != 0
            ids, logits = ids[keep], logits[keep]
        return DraftOutput(ids, logits, torch.zeros(1))


def plain(pair: ToyPair, prompt, cfg, seed, n):
    seq = list(prompt)
    for _ in range(n):
        seq.append(coupled_choose(pair.target(seq), cfg, seed, len(seq)))  # the token at position len(seq)
    return seq[len(prompt):]


def speculative(pair: ToyPair, prompt, cfg, seed, n, ks):
    """speculative.generate's bookkeeping: `last` at position P, draft i and verify row i at P + 1 + i."""
    seq = list(prompt)
    seq.append(coupled_choose(pair.target(seq), cfg, seed, len(prompt)))  # from prefill
    drafted = accepted = 0
    round_index = 0
    while len(seq) - len(prompt) < n:
        position = len(seq) - 1  # of `last`
        k = min(ks[round_index % len(ks)], n - (len(seq) - len(prompt)) - 1)
        round_index += 1
        drafts = []
        for i in range(k):
            drafts.append(coupled_draft(pair.draft(seq + drafts), cfg, seed, position + 1 + i))
        rows = torch.stack([pair.target(seq + drafts[:i]) for i in range(k + 1)])  # the verify pass
        a, next_token = coupled_accept(drafts, rows, cfg, seed, position + 1)
        seq += [*drafts[:a], next_token]
        drafted, accepted = drafted + k, accepted + a
    return seq[len(prompt):], drafted, accepted


INVARIANCE_CONFIGS = [SamplingConfig(temperature=1.0), SamplingConfig(temperature=0.8, top_k=6, top_p=0.9),
                      SamplingConfig()]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, MASK64),
    prompt=st.lists(st.integers(0, 11), min_size=1, max_size=4),
    closeness=st.sampled_from([0.0, 1.0, 3.0]),
    partial=st.booleans(),
    cfg_index=st.integers(0, len(INVARIANCE_CONFIGS) - 1),
    policy=st.lists(st.integers(0, 5), min_size=1, max_size=4),
)
def test_emitted_tokens_do_not_depend_on_k_policy_or_drafter(seed, prompt, closeness, partial, cfg_index, policy):
    cfg = INVARIANCE_CONFIGS[cfg_index]
    pair, n = ToyPair(12, closeness, partial), 14
    reference = plain(pair, prompt, cfg, seed, n)
    for ks in ([0], [1], [3], [5], policy):
        assert speculative(pair, prompt, cfg, seed, n, ks)[0] == reference, ks


def test_the_loop_accepts_and_rejects():
    """Sanity for the invariance test: drafts do get accepted, and a drafter equal to the target always is."""
    cfg = SamplingConfig(temperature=1.0)
    _, drafted, accepted = speculative(ToyPair(12, 3.0, False), [1, 2], cfg, 7, 40, [3])
    assert 0 < accepted < drafted

    class Same(ToyPair):
        def draft(self, prefix):
            return DraftOutput(torch.arange(self.vocab), self.target(prefix), torch.zeros(1))

    tokens, drafted, accepted = speculative(Same(12, 1.0, False), [1, 2], cfg, 7, 40, [4])
    assert accepted == drafted > 0  # same logits, same noise at the same positions: nothing rejected
    assert tokens == plain(Same(12, 1.0, False), [1, 2], cfg, 7, 40)


# --- the C++ port -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    return compile_driver(tmp_path_factory.mktemp("coupled"), "coupled_driver", "sampling.cpp", "json.cpp")


def run_driver(exe: Path, lines: list[str]) -> list[str]:
    done = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True,
                          timeout=120)
    return done.stdout.splitlines()


def _hex(values) -> str:
    return " ".join(float(v).hex() for v in values)


def _config(cfg: SamplingConfig) -> str:
    return f"{float(cfg.temperature).hex()} {cfg.top_k} {float(cfg.top_p).hex()}"


def _random_config(rng: random.Random, n: int) -> SamplingConfig:
    return SamplingConfig(
        temperature=rng.choice([0.0, 0.3, 0.7, 1.0, 1.0, 1.5]),
        top_k=rng.choice([0, 0, 1, 5, n, n + 3]),
        top_p=rng.choice([1.0, 1.0, 0.9, 0.5, 0.05]),
    )


def _random_logits(rng: random.Random, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(rng.getrandbits(32))
    kind = rng.random()
    if kind < 0.2:  # coarse values: equal scores, decided by the noise and the lowest-id rule
        return torch.randint(-3, 3, (n,), generator=g).float()
    return (torch.randn(n, generator=g) * rng.choice([0.05, 1.0, 4.0, 30.0])).float()


def test_cpp_noise_and_log_match_python_bit_for_bit(driver):
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.random(3000), np.exp(rng.uniform(-700, 700, 3000)), 1 - rng.random(500) * 1e-12,
                        [2.0**-53, 1 - 2.0**-53, 1.0, 2.0, math.sqrt(2)]])
    rows = [(0, 0, np.arange(262_144))]  # a full E2B row
    r = random.Random(3)
    for _ in range(30):
        rows.append((r.choice([0, 1, MASK64, r.getrandbits(64)]), r.choice([0, 1, r.randrange(1 << 40)]),
                     np.array([r.randrange(1 << 31) for _ in range(r.randint(1, 300))])))
    lines = [f"log {v.hex()}" for v in x]
    lines += [f"noise {s} {p} {len(ids)} " + " ".join(map(str, ids.tolist())) for s, p, ids in rows]
    out = run_driver(driver, lines)
    assert len(out) == len(x) + sum(len(ids) for _, _, ids in rows)
    assert [float.fromhex(v) for v in out[: len(x)]] == portable_log(x).tolist()
    got = out[len(x):]
    expected = []
    for s, p, ids in rows:
        expected += [f"{b:016x} {g}" for b, g in zip(noise_bits(s, p, ids).tolist(), gumbel_noise(s, p, ids).tolist())]
    got = [f"{b} {float.fromhex(g)}" for b, g in (line.split() for line in got)]
    assert got == expected


def test_cpp_coupled_choices_match_python(driver):
    rng = random.Random(4)
    lines, expected = [], []
    for case in range(400):
        n = rng.choice([1, 2, 7, 100, 3000]) if case >= 2 else 262_144
        cfg = _random_config(rng, n)
        logits = _random_logits(rng, n)
        seed, position = rng.choice([0, MASK64, rng.getrandbits(64)]), rng.randrange(1 << 31)
        lines.append(f"choose {seed} {position} {_config(cfg)} {n} {_hex(logits.tolist())}")
        token = coupled_choose(logits, cfg, seed, position)
        if not cfg.greedy:
            assert token == brute_force(coupled_scores(logits, cfg), torch.arange(n), seed, position)
        expected.append(str(token))
    for _ in range(300):  # drafts: candidate subsets in any order, sometimes with a repeated id
        c = rng.choice([1, 3, 16, 500])
        cfg = _random_config(rng, c)
        ids = [rng.randrange(262_144) for _ in range(c)]
        if c > 1 and rng.random() < 0.2:
            ids[-1] = ids[0]
        logits = _random_logits(rng, c)
        argmax_id = ids[int(torch.argmax(logits))]
        seed, position = rng.getrandbits(64), rng.randrange(1 << 31)
        lines.append(f"draft {seed} {position} {_config(cfg)} {argmax_id} {c} {' '.join(map(str, ids))} "
                     f"{_hex(logits.tolist())}")
        out = DraftOutput(torch.tensor(ids), logits, torch.zeros(1), argmax_id=argmax_id)
        expected.append(str(coupled_draft(out, cfg, seed, position)))
    for _ in range(150):  # accept: drafts that follow the target for a while, then may not
        vocab, k = rng.choice([5, 50, 1000]), rng.randint(0, 4)
        cfg = _random_config(rng, vocab)
        rows = torch.stack([_random_logits(rng, vocab) for _ in range(k + 1)])
        seed, first = rng.getrandbits(64), rng.randrange(1 << 31)
        drafts = [coupled_choose(rows[i], cfg, seed, first + i) if rng.random() < 0.8 else rng.randrange(vocab)
                  for i in range(k)]
        lines.append(f"accept {seed} {first} {_config(cfg)} {vocab} {k} {' '.join(map(str, drafts))} "
                     f"{_hex(rows.reshape(-1).tolist())}")
        expected.append("{} {}".format(*coupled_accept(drafts, rows, cfg, seed, first)))
    assert run_driver(driver, lines) == expected
