"""`mtp-edge fuzz`: random Gemma 4 pairs and random requests, speculative decoding held to plain decoding.

What is fuzzed
  * Pairs (eager): random small Gemma 4 target + MTP drafter configurations within the architecture,
    built directly as mtp_edge models with seeded random weights (no checkpoint files): 1-4 target
    layers in a random sliding/full pattern, sliding windows of 2-9 positions (shorter than most
    prompts), KV sharing (num_kv_shared_layers), per-type head sizes and KV heads (GQA), partial
    RoPE on full layers, Per-Layer Embeddings on or off, k_eq_v, double-wide MLP, softcap, tied or
    untied heads, vocabularies of 8-96 tokens, and a drafter of 1-3 layers with or without the
    clustered (centroid) head. Every configuration is checked by check_pair and by building the
    modules. The cache is small (max_seq_len 8-40), so generations run into its end.
  * Requests: prompt lengths crossing the sliding window; a fixed K (0..the pair's K) or k="auto"
    with a random frozen (sometimes live) CostTable, draft_call entries included, and a random
    AcceptanceEstimate history, probing and margin; a random draft_p_min (early stops); a random
    max_new_tokens; EOS ids picked from the tokens the plain output reaches, so that an EOS lands
    inside draft rounds; greedy, and seeded sampling (temperature, top-k, top-p) under both rules.
    Greedy drafts are random-weight drafts, which the target would almost never accept, so a
    greedy case may "hint" its drafter: each draft is replaced, with a probability `agree`, by the
    plain output's token at that position (the real drafter still runs and feeds the next step),
    so rounds accept 0..K drafts, full acceptances included (draft_chain drafts are hinted alike).

Checks per case
  * greedy: speculative tokens and stop reason == plain (k=0, target-only) decoding; coupled
    sampling: the same with the same seed; rejection sampling: the run repeats exactly.
  * accounting: at most max_new_tokens emitted, prompt + output - 1 <= max_seq_len, an EOS ends the
    generation (last token, stop_reason "eos"), new_tokens - 1 == rounds + accepted (less the drafts the
    verifier accepted after an EOS in the last round: counted in stats.accepted, never emitted),
    sum(k_histogram) == rounds, drafted >= accepted, cache_full only at the cache's end.

Backends: "eager" always uses random pairs. "pte" and "onnx" fuzz given bundle(s) (--bundle DIR):
random requests against the bundle, with the bundle's own plain (k=0) decoding as the reference, and,
when the manifest's source checkpoint is on this machine, greedy plain decoding compared with eager
(counted, not a failure). Greedy one-call drafts (draft_chain methods) are exercised there too.
Random pairs are not exported per run: each export costs seconds (ONNX) to minutes (.pte).
"native" and "arm64" run the random requests through the C++ runner (desktop, or cross-built for
aarch64 under qemu) on given .pte bundle(s), batched into one runner process, each held to the
Python pte backend's run of the same request token for token and stat for stat (see fuzz_native).

A mismatch is reported with a one-line reproducer, `{"backend", "pair_seed", "case"}` as JSON;
`reproduce(line)` reruns it.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from mtp_edge.models.config import FULL, SLIDING, DecoderConfig, DrafterConfig, RopeConfig, check_pair

from .backend import DraftOutput
from .draft_policy import AcceptanceEstimate, CostTable, DraftPolicy
from .sampling import SamplingConfig
from .speculative import generate

EXERCISED = ("rejections", "full_accepts", "eos_in_draft", "cache_full", "window_wraps", "policy_switches",
             "early_stops")


# --------------------------------------------------------------------------- random pairs


@dataclass(frozen=True)
class Pair:
    seed: int
    target_cfg: DecoderConfig
    drafter_cfg: DrafterConfig
    max_seq_len: int
    max_k: int  # the eager backend's K


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def random_pair_config(seed: int) -> Pair:
    """A random small Gemma 4 pair (configs only) from `seed`; validated by check_pair."""
    r = random.Random(seed)
    clustered = r.random() < 0.5
    if clustered:
        num_centroids, per = r.choice([2, 4, 8]), r.choice([2, 4, 8])
        vocab = num_centroids * per
        top_k = r.randint(1, num_centroids)
    else:
        vocab, num_centroids, top_k = r.randint(8, 96), 2, 1
    hidden = r.choice([16, 24, 32])
    heads = r.choice([1, 2, 4])
    head_dim = {SLIDING: r.choice([4, 8, 16]), FULL: r.choice([4, 8, 16, 32])}
    kv_heads = {t: r.choice(_divisors(heads)) for t in (SLIDING, FULL)}
    layers = r.randint(1, 4)
    types = [r.choice([SLIDING, FULL]) for _ in range(layers)]
    shared = r.randint(0, layers - 1)
    first_shared = layers - shared
    # A shared layer reads the last non-shared layer of its type: the type must have one.
    own = set(types[:first_shared])
    types[first_shared:] = [t if t in own else types[0] for t in types[first_shared:]]
    window = r.randint(2, 9)
    rope = {SLIDING: RopeConfig(theta=r.choice([10_000.0, 1_000_000.0])),
            FULL: RopeConfig(theta=r.choice([10_000.0, 1_000_000.0]), partial_rotary_factor=r.choice([1.0, 0.5, 0.25]))}
    rope = {t: rope[t] for t in dict.fromkeys(types)}
    ple = r.choice([0, 0, 4, 8])
    target = DecoderConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=r.choice([16, 32, 48]), num_layers=layers,
        num_heads=heads, layer_types=tuple(types), head_dims=tuple(head_dim[t] for t in types),
        num_kv_heads=tuple(kv_heads[t] for t in types), sliding_window=window, rope=rope,
        final_logit_softcap=r.choice([None, 30.0, 5.0]), ple_dim=ple, ple_vocab_size=vocab if ple else 0,
        num_kv_shared_layers=shared, use_double_wide_mlp=r.random() < 0.5, attention_k_eq_v=r.random() < 0.5,
        tie_word_embeddings=r.random() < 0.7, eos_token_ids=(),
    )
    store_types = sorted(target.store_layers)
    d_layers = r.randint(1, 3)
    d_types = [r.choice(store_types) for _ in range(d_layers)]
    d_heads = max(kv_heads[t] for t in d_types) * r.choice([1, 2])
    drafter = DrafterConfig(
        decoder=DecoderConfig(
            vocab_size=vocab, hidden_size=r.choice([16, 32]), intermediate_size=r.choice([16, 32]), num_layers=d_layers,
            num_heads=d_heads, layer_types=tuple(d_types), head_dims=tuple(head_dim[t] for t in d_types),
            num_kv_heads=tuple(kv_heads[t] for t in d_types), sliding_window=window,
            rope={t: rope[t] for t in dict.fromkeys(d_types)}, num_kv_shared_layers=d_layers,
            attention_k_eq_v=target.attention_k_eq_v, tie_word_embeddings=r.random() < 0.7, eos_token_ids=(),
        ),
        backbone_hidden_size=hidden, use_ordered_embeddings=clustered, num_centroids=num_centroids,
        centroid_top_k=top_k,
    )
    check_pair(target, drafter)
    return Pair(seed, target, drafter, max_seq_len=r.randint(8, 40), max_k=r.randint(1, 6))


def _randomize(model: torch.nn.Module, g: torch.Generator) -> None:
    """Seeded weights away from their init (as tests/hf_pairs.py does): norms near 1, layer scalars 0.5-1.5."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
            elif name.endswith("token_ordering"):
                b.copy_(torch.randperm(b.numel(), generator=g))


def build_pair(pair: Pair, dtype: torch.dtype = torch.float32):
    """(target, drafter) modules with the pair's seeded random weights; building them validates the config."""
    from mtp_edge.models.drafter import Gemma4Drafter
    from mtp_edge.models.target import Gemma4Target

    g = torch.Generator().manual_seed(pair.seed)
    target = Gemma4Target(pair.target_cfg, max_seq_len=pair.max_seq_len)
    drafter = Gemma4Drafter(pair.drafter_cfg)
    _randomize(target, g)
    _randomize(drafter, g)
    if dtype != torch.float32:
        target, drafter = target.to(dtype), drafter.to(dtype)
        target.reset_derived_buffers()
        drafter.reset_derived_buffers()
    return target.eval(), drafter.eval()


# --------------------------------------------------------------------------- random requests


@dataclass
class Case:
    """One request; `plain` fields are filled from the reference run (eos ids)."""

    seed: int
    prompt: list[int]
    k: int | str
    max_new_tokens: int
    draft_p_min: float | None = None
    sampling: dict = field(default_factory=dict)  # SamplingConfig fields; {} = greedy
    eos_pick: list[float] = field(default_factory=list)  # where in the plain output EOS ids are taken (0..1)
    eos_ids: list[int] | None = None  # set from eos_pick and the plain output (or given by a reproducer)
    costs: dict | None = None  # k="auto": CostTable.to_json()
    history: list[list[int]] = field(default_factory=list)  # (drafted, accepted) rounds seen before
    frozen: bool = True
    probe_every: int = 3
    probe_k: int = 1
    margin: float = 0.05
    agree: float = 0.0  # greedy: probability that a draft is replaced by the plain output's token

    def to_json(self) -> dict:
        return asdict(self)


def random_case(seed: int, *, vocab: int, max_seq_len: int, max_k: int, window: int) -> Case:
    r = random.Random(seed)
    longest = min(max_seq_len - 1, 2 * window + 4)
    prompt_len = r.randint(1, longest) if r.random() < 0.7 else r.randint(1, max(1, min(window, longest)))
    prompt = [r.randrange(vocab) for _ in range(prompt_len)]
    # Room to the cache's end, and sometimes a budget past it (cache_full).
    room = max_seq_len - prompt_len + 1
    max_new = room + r.randint(1, 4) if r.random() < 0.25 else r.randint(1, max(1, min(room - 1, 24)))
    rule = r.random()
    sampling = {}
    if rule >= 0.6:
        sampling = dict(temperature=r.choice([0.5, 1.0, 2.0]), top_k=r.choice([0, 0, 3, 10]),
                        top_p=r.choice([1.0, 1.0, 0.9, 0.5]), seed=r.randrange(1 << 32),
                        rule="coupled" if rule < 0.8 else "rejection")
    k: int | str = "auto" if r.random() < 0.4 else r.randint(0 if r.random() < 0.1 else 1, max_k)
    case = Case(seed=seed, prompt=prompt, k=k, max_new_tokens=max_new,
                draft_p_min=None if r.random() < 0.5 else r.choice([0.0, r.uniform(0.0, 0.5), r.uniform(0.3, 0.9)]),
                sampling=sampling, eos_pick=[r.random() for _ in range(r.choice([0, 1, 1, 2]))],
                agree=0.0 if sampling else r.choice([0.0, 0.5, 0.8, 0.95, 1.0]))
    if k == "auto":
        top = r.randint(1, max_k)
        decode = r.uniform(0.5, 2.0)
        per_token, step = r.uniform(0.0, 1.0), r.uniform(0.0, 0.6)
        verify = {n: decode * r.uniform(0.9, 1.2) + per_token * (n - 1) for n in range(2, top + 2)}
        calls = {n: step * n * r.uniform(0.3, 1.5) for n in range(1, top + 1) if r.random() < 0.5}
        case.costs = CostTable(decode, step, verify, calls).to_json()
        case.history = [[d, r.randint(0, d)] for d in (r.randint(0, top) for _ in range(r.randint(0, 8)))]
        case.frozen = bool(sampling) or r.random() < 0.7  # seeded rejection sampling must be frozen to repeat
        case.probe_every, case.probe_k = r.randint(0, 4), r.randint(1, top)
        case.margin = r.choice([0.0, 0.05, 0.3])
    return case


def make_policy(case: Case) -> DraftPolicy | None:
    if case.k != "auto":
        return None
    costs = CostTable.from_json(case.costs)
    acceptance = AcceptanceEstimate(costs.max_k)
    for drafted, accepted in case.history:
        acceptance = acceptance.observed(drafted, accepted)
    return DraftPolicy(costs, costs.max_k, acceptance=acceptance, frozen=case.frozen, probe_every=case.probe_every,
                       probe_k=case.probe_k, margin=case.margin)


class HintedDrafts:
    """Wraps a backend: each draft (the drafter still runs) becomes, with probability `agree`, the
    reference output's token at its position, so greedy rounds accept drafts (random weights alone
    almost never agree). Deterministic in (seed, position)."""

    def __init__(self, inner, sequence: list[int], agree: float, seed: int):
        self.inner, self.sequence, self.agree, self.seed = inner, sequence, agree, seed
        self.vocab_size, self.max_seq_len = inner.vocab_size, inner.max_seq_len
        self.max_draft, self.has_drafter = inner.max_draft, inner.has_drafter
        self.draft_chains = getattr(inner, "draft_chains", frozenset())
        self.step = 0

    def prefill(self, tokens):
        return self.inner.prefill(tokens)

    def _agrees(self, at: int) -> bool:
        return at < len(self.sequence) and random.Random(self.seed * 1_000_003 + at).random() < self.agree

    def draft_chain(self, token, hidden, position, validated_length, k):
        drafts, top = self.inner.draft_chain(token, hidden, position, validated_length, k)
        return [self.sequence[position + 1 + i] if self._agrees(position + 1 + i) else d for i, d in enumerate(drafts)], top

    def verify(self, tokens, start):
        self.step = 0
        return self.inner.verify(tokens, start)

    def draft(self, token, hidden, position, validated_length):
        out = self.inner.draft(token, hidden, position, validated_length)
        at = position + 1 + self.step
        self.step += 1
        if self._agrees(at):
            return DraftOutput(out.candidate_ids, out.candidate_logits, out.hidden, argmax_id=self.sequence[at])
        return out

    def rollback(self, length):
        self.inner.rollback(length)


# --------------------------------------------------------------------------- one case


@dataclass
class Outcome:
    ok: bool
    problems: list[str]
    exercised: dict[str, bool]
    one_call: bool = False  # drafted greedily through the backend's draft_chain (bundles with draft_chain methods)
    generation: object = None  # the speculative run's Generation (the native runner is held to it)


def _expected_with_eos(tokens: list[int], eos: set[int], stop_reason: str) -> tuple[list[int], str]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1], "eos"
    return tokens, stop_reason


def run_case(spec_backend, plain_backend, case: Case, *, window: int) -> Outcome:
    """Run one request on `spec_backend` (speculative) against `plain_backend` (k=0); check and classify it."""
    sampling = SamplingConfig(**case.sampling)
    problems: list[str] = []
    prompt = case.prompt
    reference = None
    if sampling.greedy or sampling.coupled:
        plain = generate(plain_backend, prompt, k=0, max_new_tokens=case.max_new_tokens, sampling=sampling)
        reference = plain.tokens
        if case.eos_ids is None:
            case.eos_ids = sorted({plain.tokens[min(len(plain.tokens) - 1, int(p * len(plain.tokens)))]
                                   for p in case.eos_pick})
        expected, expected_stop = _expected_with_eos(plain.tokens, set(case.eos_ids), plain.stats.stop_reason)
    elif case.eos_ids is None:
        r = random.Random(case.seed)
        case.eos_ids = sorted({r.randrange(spec_backend.vocab_size) for _ in case.eos_pick})
    eos = set(case.eos_ids)
    backend = spec_backend
    if case.agree > 0 and reference is not None and sampling.greedy:
        backend = HintedDrafts(spec_backend, [*prompt, *reference], case.agree, case.seed)

    def run():
        return generate(backend, prompt, k=case.k, policy=make_policy(case), draft_p_min=case.draft_p_min,
                        max_new_tokens=case.max_new_tokens, sampling=sampling, eos_ids=case.eos_ids)

    try:
        spec = run()
    except Exception as e:  # noqa: BLE001 - any crash is a finding
        return Outcome(False, [f"raised {type(e).__name__}: {e}"], {})
    s, tokens = spec.stats, spec.tokens
    if reference is not None:
        if tokens != expected:
            first = next((i for i, (a, b) in enumerate(zip(tokens, expected)) if a != b), min(len(tokens), len(expected)))
            problems.append(f"tokens differ from plain decoding at output index {first}: {tokens} vs {expected}")
        if s.stop_reason != expected_stop:
            problems.append(f"stop_reason {s.stop_reason!r}, plain decoding {expected_stop!r}")
    else:
        again = run()
        if again.tokens != tokens or again.stats.round_log != s.round_log:
            problems.append(f"a seeded rejection-sampling run does not repeat: {tokens} then {again.tokens}")
    if len(tokens) > case.max_new_tokens:
        problems.append(f"{len(tokens)} tokens emitted, max_new_tokens {case.max_new_tokens}")
    if len(tokens) != s.new_tokens:
        problems.append(f"stats.new_tokens {s.new_tokens}, {len(tokens)} tokens returned")
    if len(prompt) + len(tokens) - 1 > spec_backend.max_seq_len:
        problems.append(f"prompt {len(prompt)} + {len(tokens)} tokens ran past the cache ({spec_backend.max_seq_len})")
    hits = [i for i, t in enumerate(tokens) if t in eos]
    if hits and (hits[0] != len(tokens) - 1 or s.stop_reason != "eos"):
        problems.append(f"EOS at output index {hits[0]} of {len(tokens)} did not end the generation ({s.stop_reason})")
    if s.stop_reason == "eos" and not hits:
        problems.append("stop_reason eos without an EOS token")
    if s.stop_reason == "cache_full" and len(prompt) + len(tokens) - 1 != spec_backend.max_seq_len:
        problems.append("stop_reason cache_full before the cache's end")
    # An EOS among a round's accepted drafts ends the generation there: the drafts accepted after it
    # are counted in stats.accepted but never emitted (`cut`, only in the last round of an EOS stop).
    cut = 0
    if s.round_log:
        last = s.round_log[-1]
        cut = last.accepted + 1 - (len(tokens) - (1 + sum(r.accepted + 1 for r in s.round_log[:-1])))
        if not 0 <= cut <= last.accepted or (cut and s.stop_reason != "eos"):
            problems.append(f"the last round emitted {last.accepted + 1 - cut} tokens of {last.accepted + 1} "
                            f"(stop {s.stop_reason})")
    if s.new_tokens - 1 != s.rounds + s.accepted - cut:
        problems.append(f"new_tokens - 1 = {s.new_tokens - 1} != rounds {s.rounds} + accepted {s.accepted}"
                        + (f" - {cut} accepted after the EOS" if cut else ""))
    if sum(s.k_histogram.values()) != s.rounds:
        problems.append(f"k_histogram {s.k_histogram} does not sum to rounds {s.rounds}")
    if s.drafted < s.accepted:
        problems.append(f"drafted {s.drafted} < accepted {s.accepted}")

    eos_in_draft = False
    if s.stop_reason == "eos" and s.round_log:
        last = s.round_log[-1]
        before = 1 + sum(r.accepted + 1 for r in s.round_log[:-1])
        eos_in_draft = len(tokens) - 1 - before < last.accepted  # the EOS was a draft, not the target's own token
    hist = s.k_histogram
    exercised = {
        "rejections": s.drafted > s.accepted,
        "full_accepts": any(r.drafted > 0 and r.accepted == r.drafted for r in s.round_log),
        "eos_in_draft": eos_in_draft,
        "cache_full": s.stop_reason == "cache_full",
        "window_wraps": len(prompt) + len(tokens) > window,
        "policy_switches": case.k == "auto" and 0 in hist and any(k > 0 for k in hist),
        "early_stops": s.early_stops > 0,
    }
    return Outcome(not problems, problems, exercised, s.draft_calls > 0, spec)


# --------------------------------------------------------------------------- runs


@dataclass
class BackendReport:
    backend: str
    cases: int = 0
    mismatches: int = 0
    pairs: int = 0
    greedy: int = 0
    coupled: int = 0
    rejection: int = 0
    auto: int = 0
    exercised: dict = field(default_factory=lambda: dict.fromkeys(EXERCISED, 0))
    reproducers: list = field(default_factory=list)
    seconds: float = 0.0
    one_call_cases: int = 0  # cases with rounds drafted in one draft_chain call (never on eager)
    bundle: str | None = None
    eager_compared: int = 0  # bundles: greedy cases whose plain decoding was also run on the eager source pair
    eager_differences: int = 0
    # native-arm64 on a quantized bundle: cases whose ARM tokens or stats differ from x86's Python run
    # (ARM's int8 kernels may round otherwise; reported, not failures: validate --arch arm64 measures it)
    x86_differences: int | None = None


def _record(report: BackendReport, case: Case, outcome: Outcome, reproducer: dict, say) -> None:
    report.cases += 1
    rule = SamplingConfig(**case.sampling)
    report.greedy += rule.greedy
    report.coupled += rule.coupled
    report.rejection += rule.depends_on_draft_lengths
    report.auto += case.k == "auto"
    for name, hit in outcome.exercised.items():
        report.exercised[name] += hit
    report.one_call_cases += outcome.one_call
    if not outcome.ok:
        report.mismatches += 1
        line = json.dumps(reproducer, separators=(",", ":"))
        report.reproducers.append({"reproducer": line, "problems": outcome.problems})
        say(f"MISMATCH {'; '.join(outcome.problems)}\n  reproduce: {line}")


@contextlib.contextmanager
def _one_thread():
    """The models fuzzed are tiny: one torch thread per call; more only contend (many times slower on a
    busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fuzz_eager(cases: int, seed: int, *, cases_per_pair: int = 8, wrap=None, progress: bool = True) -> BackendReport:
    """`cases` random requests on random pairs; wrap(backend) -> backend replaces the speculative backend
    (the tests wrap it with a deliberately broken one)."""
    from .backends.eager import EagerBackend

    say = _say(progress)
    report = BackendReport("eager")
    started = time.perf_counter()
    with _one_thread():
        _fuzz_pairs(report, cases, seed, cases_per_pair, wrap, say, EagerBackend)
    report.seconds = time.perf_counter() - started
    return report


def _fuzz_pairs(report: BackendReport, cases: int, seed: int, cases_per_pair: int, wrap, say, EagerBackend) -> None:
    pair_index = 0
    while report.cases < cases:
        pair = random_pair_config(seed * 1_000_003 + pair_index)
        pair_index += 1
        target, drafter = build_pair(pair)
        report.pairs += 1
        spec_backend = EagerBackend(target, drafter, max_draft=pair.max_k)
        if wrap is not None:
            spec_backend = wrap(spec_backend)
        plain_backend = EagerBackend(target, None)
        for j in range(min(cases_per_pair, cases - report.cases)):
            case = random_case(pair.seed * 97 + j, vocab=pair.target_cfg.vocab_size, max_seq_len=pair.max_seq_len,
                               max_k=pair.max_k, window=pair.target_cfg.sliding_window)
            outcome = run_case(spec_backend, plain_backend, case, window=pair.target_cfg.sliding_window)
            _record(report, case, outcome, {"backend": "eager", "pair_seed": pair.seed, "case": case.to_json()}, say)
            _tick(report, cases, say)


def _eager_reference(manifest, max_seq_len: int):
    """A target-only eager backend of the bundle's source checkpoint, when the manifest names one that exists."""
    from pathlib import Path

    from mtp_edge.models import load_target

    from .backends.eager import EagerBackend

    source = manifest.source
    if source is None or not source.target or not (Path(source.target) / "config.json").is_file():
        return None
    return EagerBackend(load_target(source.target, max_seq_len))


def fuzz_bundle(bundle_dir, backend_name: str, cases: int, seed: int, *, progress: bool = True) -> BackendReport:
    """`cases` random requests against one exported bundle; reference: its own plain (k=0) decoding.

    When the bundle's source checkpoint is on this machine, greedy plain decoding of the bundle is also
    compared with eager plain decoding: `eager_differences` counts those (reported, not failures: a
    quantized bundle, or fp32 kernels summing in another order at a near tie, may differ)."""
    with _one_thread():  # the eager reference of a small pair: see fuzz_eager
        return _fuzz_bundle(bundle_dir, backend_name, cases, seed, progress)


def _fuzz_bundle(bundle_dir, backend_name: str, cases: int, seed: int, progress: bool) -> BackendReport:
    report = BackendReport(backend_name, pairs=1, bundle=str(bundle_dir))
    started = time.perf_counter()
    _fuzz_requests(report, bundle_dir, backend_name, cases, seed, _say(progress), cases,
                   {"backend": backend_name, "bundle": str(bundle_dir)})
    report.seconds = time.perf_counter() - started
    return report


def _fuzz_requests(report: BackendReport, bundle_dir, backend_name: str, cases: int, seed: int, say, total: int,
                   where: dict, eager_must_match: bool = False) -> None:
    """`cases` random requests on one bundle, added to `report`; `where`: the reproducer's bundle fields.
    eager_must_match: a greedy plain output that differs from the eager source pair's is a mismatch."""
    from mtp_edge.export.manifest import read_manifest

    from .backends import open_bundle

    backend = open_bundle(bundle_dir, backend_name, threads=None)
    manifest = read_manifest(bundle_dir, verify_hashes=False)
    window = manifest.target_config.sliding_window
    eager = _eager_reference(manifest, backend.max_seq_len)
    for j in range(cases):
        case = random_case(seed * 1_000_003 + j, vocab=backend.vocab_size, max_seq_len=backend.max_seq_len,
                           max_k=backend.max_draft, window=window)
        outcome = run_case(backend, backend, case, window=window)
        if eager is not None and not case.sampling:
            report.eager_compared += 1
            mine = generate(backend, case.prompt, k=0, max_new_tokens=case.max_new_tokens, eos_ids=case.eos_ids).tokens
            theirs = generate(eager, case.prompt, k=0, max_new_tokens=case.max_new_tokens, eos_ids=case.eos_ids).tokens
            report.eager_differences += mine != theirs
            if eager_must_match and mine != theirs:
                outcome.problems.append(f"plain decoding of the bundle {mine} differs from the eager pair's {theirs}")
                outcome.ok = False
        _record(report, case, outcome, {**where, "case": case.to_json()}, say)
        _tick(report, total, say)


def hf_pair_configs(seed: int):
    """Random pairs (random_pair_config) that a Hugging Face Gemma 4 checkpoint can hold: the others (a
    sliding last layer, KV heads differing by layer type) exist only as modules, never as a checkpoint
    a user exports."""
    from mtp_edge.models.errors import CheckpointError
    from mtp_edge.models.hf_format import decoder_to_hf_text_config, drafter_to_hf_config

    index = 0
    while True:
        pair = random_pair_config(seed * 1_000_003 + index)
        index += 1
        try:
            decoder_to_hf_text_config(pair.target_cfg)
            drafter_to_hf_config(pair.drafter_cfg)
        except CheckpointError:
            continue
        yield pair


def export_settings_for(pair: Pair, backend_name: str):
    """The bundle a random pair is exported to: fp32 (so eager is the exact reference), the pair's K and
    cache, a prefill chunk and (.pte) one-call drafts drawn from the pair's seed."""
    from mtp_edge.export.settings import ExportSettings

    r = random.Random(pair.seed)
    return ExportSettings(k=pair.max_k, max_seq_len=pair.max_seq_len, prefill_chunk=r.choice([1, 2, 3, 4, 8]),
                          backend="portable", formats=(backend_name,), quantize="none",
                          draft_chains=None if r.random() < 0.5 else ())


def export_pair(pair: Pair, backend_name: str, folder) -> object:
    """Save a random pair as Hugging Face folders under `folder` and export it (export_settings_for)."""
    from pathlib import Path

    from mtp_edge.export.bundle import write_bundle
    from mtp_edge.models.hf_format import save_drafter, save_target

    folder = Path(folder)
    target, drafter = build_pair(pair)
    save_target(target, folder / "target", dtype=torch.float32)
    save_drafter(drafter, folder / "drafter", dtype=torch.float32)
    write_bundle(folder / "target", folder / "drafter", folder / "bundle", export_settings_for(pair, backend_name),
                 progress=False)
    return folder / "bundle"


def fuzz_exported(backend_name: str, cases: int, seed: int, *, pairs: int, progress: bool = True) -> BackendReport:
    """`pairs` random pairs (hf_pair_configs) saved as checkpoints, exported to `backend_name` ("pte" or
    "onnx") and fuzzed with cases / pairs random requests each; a bundle's greedy plain decoding must
    equal the eager source pair's. Each pair is exported once and removed after its requests."""
    import shutil
    import tempfile

    say = _say(progress)
    report = BackendReport(f"{backend_name}-exported")
    started = time.perf_counter()
    configs = hf_pair_configs(seed)
    with _one_thread():
        for i in range(pairs):
            pair = next(configs)
            folder = tempfile.mkdtemp(prefix="mtp-edge-fuzz-")
            try:
                say(f"{report.backend}: pair {i + 1}/{pairs} (seed {pair.seed}): exporting")
                try:
                    bundle = export_pair(pair, backend_name, folder)
                except Exception as e:  # noqa: BLE001 - an export that fails on a valid checkpoint is a finding
                    report.mismatches += 1
                    line = json.dumps({"backend": report.backend, "pair_seed": pair.seed}, separators=(",", ":"))
                    report.reproducers.append({"reproducer": line, "problems": [f"export raised {type(e).__name__}: {e}"]})
                    say(f"MISMATCH export raised {type(e).__name__}: {e}\n  reproduce: {line}")
                    continue
                report.pairs += 1
                share = cases // pairs + (i < cases % pairs)
                _fuzz_requests(report, bundle, backend_name, share, pair.seed, say, cases,
                               {"backend": report.backend, "pair_seed": pair.seed}, eager_must_match=True)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    report.seconds = time.perf_counter() - started
    return report


# The stats a native run must share with the Python pte backend's run of the same request.
NATIVE_STATS = ("new_tokens", "rounds", "drafted", "accepted", "stop_reason", "early_stops", "draft_calls", "k_histogram")


def native_request(case: Case) -> dict:
    """The runner's request line for a case (after run_case has fixed its EOS ids)."""
    from .native.validate import request

    policy = None
    if case.k == "auto":
        policy = {"probe_every": case.probe_every, "probe_k": case.probe_k, "margin": case.margin,
                  "history": case.history}
    return request(case.prompt, k=case.k, max_new_tokens=case.max_new_tokens,
                   sampling=SamplingConfig(**case.sampling) if case.sampling else None,
                   draft_p_min=case.draft_p_min, costs=case.costs, policy=policy, eos_ids=case.eos_ids)


def native_problems(python, native) -> list[str]:
    """Where the native runner's answer differs from the Python pte backend's Generation of the same case."""
    problems = []
    if native.tokens != python.tokens:
        first = next((i for i, (a, b) in enumerate(zip(native.tokens, python.tokens)) if a != b),
                     min(len(native.tokens), len(python.tokens)))
        problems.append(f"native tokens differ from the Python pte backend's at output index {first}: "
                        f"{native.tokens} vs {python.tokens}")
    mine = python.stats.as_dict()
    for name in NATIVE_STATS:
        a, b = native.stats.get(name), mine[name]
        if name == "k_histogram":
            a, b = ({k: n for k, n in (h or {}).items() if n} for h in (a, b))
        if a != b:
            problems.append(f"native stats.{name} {a!r}, Python {b!r}")
    return problems


def native_accounting(case: Case, tokens: list[int], stats: dict, max_seq_len: int) -> list[str]:
    """run_case's accounting checks on a native answer (its stats carry no per-round log)."""
    problems = []
    if len(tokens) > case.max_new_tokens or len(tokens) != stats["new_tokens"]:
        problems.append(f"native: {len(tokens)} tokens, stats.new_tokens {stats['new_tokens']}, "
                        f"max_new_tokens {case.max_new_tokens}")
    if len(case.prompt) + len(tokens) - 1 > max_seq_len:
        problems.append(f"native: prompt {len(case.prompt)} + {len(tokens)} tokens ran past the cache ({max_seq_len})")
    hits = [i for i, t in enumerate(tokens) if t in set(case.eos_ids or ())]
    if hits and (hits[0] != len(tokens) - 1 or stats["stop_reason"] != "eos"):
        problems.append(f"native: EOS at output index {hits[0]} of {len(tokens)} did not end the generation")
    if sum(stats["k_histogram"].values()) != stats["rounds"] or stats["drafted"] < stats["accepted"]:
        problems.append(f"native: k_histogram {stats['k_histogram']}, rounds {stats['rounds']}, drafted "
                        f"{stats['drafted']}, accepted {stats['accepted']} do not add up")
    return problems


def fuzz_native(bundle_dir, cases: int, seed: int, *, arch: str = "native", progress: bool = True) -> BackendReport:
    """`cases` random requests run by the native runner (arch "native", or "arm64" under qemu) on a .pte
    bundle, each held to the Python pte backend's run of the same request: the same tokens (seeded sampling
    under both rules included) and the same stats (rounds, drafts, acceptances, stop reason, histogram).
    The Python run is itself checked as in fuzz_bundle (speculative == plain, accounting), so the native
    runner inherits those checks; the runner's own answer is also checked for accounting and, greedy and
    coupled, against its own plain (K = 0) decoding. Policies are frozen (a live one follows each side's
    own timings) and drafts are not hinted (the runner drafts on its own): a bundle with a trained drafter
    (the shipped pair) gets drafts accepted and rejected. On arm64 a quantized bundle's tokens may differ
    from x86's (ARM's int8 kernels round otherwise): counted in x86_differences, not failures; its
    speculative == plain on ARM itself still is one."""
    with _one_thread():
        return _fuzz_native(bundle_dir, cases, seed, arch, progress)


def _fuzz_native(bundle_dir, cases: int, seed: int, arch: str, progress: bool) -> BackendReport:
    from mtp_edge.export.manifest import read_manifest

    from .backends import open_bundle
    from .native.validate import run_requests

    say = _say(progress)
    name = "native" if arch == "native" else f"native-{arch}"
    report = BackendReport(name, pairs=1, bundle=str(bundle_dir))
    backend = open_bundle(bundle_dir, "pte", threads=None)
    manifest = read_manifest(bundle_dir, verify_hashes=False)
    window = manifest.target_config.sliding_window
    exact = arch == "native" or manifest.quantization.recipe_for("pte") == "none"
    if not exact:
        report.x86_differences = 0
    started = time.perf_counter()
    batch = []  # (case, Python outcome)
    for j in range(cases):
        case = random_case(seed * 1_000_003 + j, vocab=backend.vocab_size, max_seq_len=backend.max_seq_len,
                           max_k=backend.max_draft, window=window)
        case.agree, case.frozen = 0.0, True
        batch.append((case, run_case(backend, backend, case, window=window)))
        if len(batch) < 50 and j < cases - 1:
            continue
        lines, with_plain = [], []
        for c, _ in batch:
            lines.append(native_request(c))
            # Greedy and coupled: the runner's own K = 0 run must give the same tokens.
            with_plain.append(not SamplingConfig(**c.sampling).depends_on_draft_lengths)
            if with_plain[-1]:
                lines.append(native_request(Case(**{**c.to_json(), "k": 0, "costs": None, "draft_p_min": None})))
        answers = iter(run_requests(bundle_dir, lines, arch=arch, progress=False))
        for (c, outcome), plain_asked in zip(batch, with_plain):
            native = next(answers)
            problems = native_accounting(c, native.tokens, native.stats, backend.max_seq_len)
            if plain_asked:
                plain = next(answers)
                if (native.tokens, native.stats["stop_reason"]) != (plain.tokens, plain.stats["stop_reason"]):
                    problems.append(f"native: speculative {native.tokens} ({native.stats['stop_reason']}) differs from "
                                    f"its own plain decoding {plain.tokens} ({plain.stats['stop_reason']})")
            if outcome.generation is not None:
                differences = native_problems(outcome.generation, native)
                if exact:
                    problems += differences
                elif differences:
                    report.x86_differences += 1
            outcome.problems += problems
            outcome.ok = not outcome.problems
            _record(report, c, outcome, {"backend": name, "bundle": str(bundle_dir), "case": c.to_json()}, say)
            _tick(report, cases, say)
        batch = []
    report.seconds = time.perf_counter() - started
    return report


def reproduce(line: str, wrap=None) -> Outcome:
    """Rerun a reproducer line printed by a mismatch."""
    from .backends.eager import EagerBackend

    data = json.loads(line)
    case = Case(**data["case"]) if "case" in data else None
    if data["backend"] == "eager":
        pair = random_pair_config(data["pair_seed"])
        target, drafter = build_pair(pair)
        spec = EagerBackend(target, drafter, max_draft=pair.max_k)
        return run_case(wrap(spec) if wrap else spec, EagerBackend(target, None), case,
                        window=pair.target_cfg.sliding_window)
    from mtp_edge.export.manifest import read_manifest

    from .backends import open_bundle

    if data["backend"].endswith("-exported"):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="mtp-edge-fuzz-") as folder:
            pair = random_pair_config(data["pair_seed"])
            bundle = export_pair(pair, data["backend"].removesuffix("-exported"), folder)
            if case is None:
                return Outcome(True, [], {})  # the export itself was the finding, and it now succeeds
            backend = open_bundle(bundle, data["backend"].removesuffix("-exported"))
            return run_case(backend, backend, case, window=pair.target_cfg.sliding_window)
    window = read_manifest(data["bundle"], verify_hashes=False).target_config.sliding_window
    if data["backend"].startswith("native"):
        from .native.validate import run_requests

        backend = open_bundle(data["bundle"], "pte")
        outcome = run_case(backend, backend, case, window=window)
        arch = data["backend"].removeprefix("native").removeprefix("-") or "native"
        if outcome.generation is not None:
            native = run_requests(data["bundle"], [native_request(case)], arch=arch)[0]
            outcome.problems += native_problems(outcome.generation, native)
            outcome.ok = not outcome.problems
        return outcome
    backend = open_bundle(data["bundle"], data["backend"])
    return run_case(backend, backend, case, window=window)


def _say(progress: bool):
    return (lambda m: print(f"[fuzz] {m}", file=sys.stderr, flush=True)) if progress else (lambda m: None)


def _tick(report: BackendReport, total: int, say) -> None:
    every = max(1, min(100, math.ceil(total / 10)))
    if report.cases % every == 0 or report.cases == total:
        say(f"{report.backend}: {report.cases}/{total} cases, {report.mismatches} mismatches")


def _bundles_holding(fmt: str, bundles, refusal: str) -> list:
    """The given bundles that hold format `fmt`; none is a one-line error starting with `refusal`."""
    from mtp_edge.export.manifest import read_manifest
    from mtp_edge.models.errors import MtpEdgeError

    holding = [b for b in bundles if fmt in read_manifest(b, verify_hashes=False).formats]
    if not holding:
        raise MtpEdgeError(f"{refusal} ({', '.join(map(str, bundles)) or 'no --bundle given'}).")
    return holding


def run_fuzz(backends=("eager",), cases: int = 200, seed: int = 0, bundles=(), progress: bool = True,
             exported_pairs: int = 0) -> dict:
    """The report of `mtp-edge fuzz`: per backend the cases run, the mismatches and what the cases exercised.
    exported_pairs: pte and onnx also export that many random pairs and fuzz them (fuzz_exported)."""
    reports = []
    for name in backends:
        if name in ("pte", "onnx") and exported_pairs:
            reports.append(fuzz_exported(name, cases, seed, pairs=exported_pairs, progress=progress))
            if not bundles:
                continue
        if name == "eager":
            reports.append(fuzz_eager(cases, seed, progress=progress))
        elif name in ("native", "arm64"):
            for bundle in _bundles_holding("pte", bundles, f"--backends {name}: the native runner runs .pte bundles and none of "
                                                            "the given bundles holds one"):
                reports.append(fuzz_native(bundle, cases, seed, arch=name, progress=progress))
        else:
            for bundle in _bundles_holding(name, bundles, f"--backends {name}: none of the given bundles holds {name}"):
                reports.append(fuzz_bundle(bundle, name, cases, seed, progress=progress))
    return {"seed": seed, "ok": all(r.mismatches == 0 for r in reports),
            "backends": [asdict(r) for r in reports]}


def format_fuzz(report: dict) -> str:
    names = ["cases", "mismatches", "pairs", "greedy", "coupled", "rejection", "auto", *EXERCISED, "one_call_cases",
             "seconds"]
    rows = [[r["backend"]] + [
        f"{r['seconds']:.1f}" if n == "seconds" else str(r["exercised"][n] if n in EXERCISED else r[n]) for n in names]
        for r in report["backends"]]
    header = ["backend", *names]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    for r in report["backends"]:
        if r["bundle"] or r["eager_compared"]:
            eager = (f"greedy plain decoding differs from eager on {r['eager_differences']} of {r['eager_compared']}"
                     if r["eager_compared"] else "no eager reference (source checkpoint not found)")
            if r.get("x86_differences") is not None:
                eager += (f"; {r['x86_differences']} of {r['cases']} cases differ from x86's Python run (a quantized "
                          "bundle: ARM's int8 kernels may round otherwise; not a failure)")
            lines.append(f"{r['backend']}: " + (f"bundle {r['bundle']}; " if r["bundle"] else "") + eager)
        for m in r["reproducers"]:
            lines.append(f"{r['backend']} mismatch: {'; '.join(m['problems'])}\n  reproduce: {m['reproducer']}")
    lines.append(f"seed {report['seed']}: " + ("no mismatches" if report["ok"] else "MISMATCHES FOUND"))
    return "\n".join(lines) + "\n"
