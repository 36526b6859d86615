"""Where the draft-length policy gets its cost table: tuning.json, warm-up calls, or a fixed default.

`mtp-edge tune BUNDLE` writes `tuning.json` beside a bundle: the seconds this machine spends per
call of each method, per backend. It is machine-local (not listed in the manifest, not copied
with the bundle) and tagged with the machine and the program it was measured on; a malformed or
foreign one is refused with a message and the policy measures its own costs instead. Costs only
decide how many tokens are drafted, so they can never change greedy output (or coupled-rule
sampling output); under the rejection rule they can, which is why seeded rejection-rule runs use a
frozen table (tuning.json, else the backend's default, default_costs), never live timings.

Without tuning.json the policy times a few warm-up calls of each method before the prompt is
prefilled (positions 0..K, overwritten by the prefill; tens of milliseconds on the shipped pair),
then keeps the table current from every call the loop times.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import weakref
from dataclasses import replace
from pathlib import Path

import torch

from .draft_policy import AcceptanceEstimate, CostTable, DraftPolicy
from .sampling import SamplingConfig

TUNING_FILE = "tuning.json"
TUNING_VERSION = 1

# Relative costs for seeded rejection-rule runs without tuning.json, per backend (the choice must
# not depend on timings, so that a seeded run repeats; it may depend on which backend runs).
# The .pte (and the native runner's default_costs(), which must stay equal): verify grows a quarter
# of a decode per extra token and a draft step costs a tenth of one (the shipped pair's default .pte
# measures 0.2x-0.3x per extra verify token and 0.16x-0.27x per draft step; the full E2B .pte 0.5x
# and 0.05x).
DEFAULT_COSTS = CostTable(decode=1.0, draft_step=0.1, verify={n: 1.0 + 0.25 * (n - 1) for n in range(2, 34)})
# Eager PyTorch and ONNX Runtime: verify is nearly flat in its token count and a draft step cheap.
# Measured (tune's cost table, session 12): eager fp32 shipped pair verify(5) 1.3x-1.4x a decode,
# draft step 0.055x-0.059x; ONNX fp32 shipped pair 1.06x-1.33x and 0.08x-0.10x; the full E2B pair's
# 4-bit ONNX bundle 1.52x and 0.023x. With the .pte's table these backends drafted too little
# (session 8's bench adaptive: seeded auto 0.72x-0.76x of the best fixed K on eager and ONNX).
FLAT_VERIFY_COSTS = CostTable(decode=1.0, draft_step=0.06, verify={n: 1.0 + 0.1 * (n - 1) for n in range(2, 34)})
DEFAULT_COSTS_BY_BACKEND = {"eager": FLAT_VERIFY_COSTS, "onnx": FLAT_VERIFY_COSTS}

# Cost tables measured per backend object: warm-up once per backend, then kept current across generations.
_measured: "weakref.WeakKeyDictionary[object, CostTable]" = weakref.WeakKeyDictionary()
# The acceptance a backend's last live generation ended with: the next one starts from what the
# drafter was seen to do, not from the uninformed prior (which, when plain decoding wins at 50%,
# would leave only probe rounds to learn from, one every probe_every rounds).
_acceptance: "weakref.WeakKeyDictionary[object, AcceptanceEstimate]" = weakref.WeakKeyDictionary()
# Where a backend's last live generation left its probing (DraftPolicy.probing): while drafting does
# not pay, the wait between probe rounds keeps growing across generations instead of restarting.
_probing: "weakref.WeakKeyDictionary[object, tuple[int, int]]" = weakref.WeakKeyDictionary()
# Pseudo-rounds a tuning.json acceptance counts for, before the first round of a generation.
TUNED_ACCEPTANCE_WEIGHT = 8.0


class TuningError(ValueError):
    """A tuning.json that cannot be used here (malformed, another machine, another program)."""


def machine_id() -> dict:
    """What makes timings comparable: the CPU model and count, the OS and the Python runtime."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "system": platform.system()}


def bundle_key(bundle_dir: Path) -> str:
    """The sha256s of the bundle's artifacts (from its manifest): a tuning.json belongs to one export."""
    from mtp_edge.export.manifest import read_manifest

    return ",".join(sorted(a.sha256 for a in read_manifest(bundle_dir, verify_hashes=False).artifacts.values()))


def write_tuning(bundle_dir: str | Path, backend_name: str, costs: CostTable, extra: dict | None = None) -> Path:
    """Add (or replace) backend_name's cost table in bundle_dir/tuning.json."""
    path = Path(bundle_dir) / TUNING_FILE
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
        if data.get("version") != TUNING_VERSION or data.get("machine") != machine_id() or data.get("bundle") != bundle_key(bundle_dir):
            data = {}
    except (json.JSONDecodeError, OSError):
        data = {}
    data.update(version=TUNING_VERSION, machine=machine_id(), bundle=bundle_key(bundle_dir))
    data.setdefault("backends", {})[backend_name] = {"costs": costs.to_json(), **(extra or {})}
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
    return path


def read_tuning(bundle_dir: str | Path, backend_name: str, *, sampled: bool = False) -> CostTable | None:
    """backend_name's cost table from bundle_dir/tuning.json; None when there is none. sampled: the
    table timed with sampling's work (`sampled_costs`, tune writes both), else the greedy one.
    Raises TuningError for a file that is malformed or was measured elsewhere."""
    entry = _tuning_entry(bundle_dir, backend_name)
    if entry is None:
        return None
    key = "sampled_costs" if sampled and "sampled_costs" in entry else "costs"
    try:
        return CostTable.from_json(entry[key])
    except (KeyError, TypeError, ValueError) as e:
        raise TuningError(f"{Path(bundle_dir) / TUNING_FILE}: the {backend_name} cost table is malformed ({e}); "
                          f"rerun `mtp-edge tune {bundle_dir}`.") from None


def read_tuned_acceptance(bundle_dir: str | Path, backend_name: str) -> list[float] | None:
    """The acceptance per draft position `tune` measured for backend_name; None when there is none."""
    entry = _tuning_entry(bundle_dir, backend_name)
    rates = None if entry is None else entry.get("acceptance")
    if rates is None:
        return None
    if not isinstance(rates, list) or not all(isinstance(a, (int, float)) and 0.0 <= a <= 1.0 for a in rates):
        raise TuningError(f"{Path(bundle_dir) / TUNING_FILE}: the {backend_name} acceptance is not a list of probabilities; "
                          f"rerun `mtp-edge tune {bundle_dir}`.")
    return [float(a) for a in rates]


def _tuning_entry(bundle_dir: str | Path, backend_name: str) -> dict | None:
    path = Path(bundle_dir) / TUNING_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TuningError(f"{path}: not valid JSON ({e}); delete it or rerun `mtp-edge tune {bundle_dir}`.") from None
    if not isinstance(data, dict) or data.get("version") != TUNING_VERSION:
        raise TuningError(f"{path}: not a tuning file of version {TUNING_VERSION}; rerun `mtp-edge tune {bundle_dir}`.")
    if data.get("machine") != machine_id():
        raise TuningError(f"{path}: measured on another machine ({data.get('machine')}); rerun `mtp-edge tune {bundle_dir}` here.")
    if data.get("bundle") != bundle_key(bundle_dir):
        raise TuningError(f"{path}: measured on another export of this bundle; rerun `mtp-edge tune {bundle_dir}`.")
    entry = data.get("backends", {}).get(backend_name)
    if entry is not None and not isinstance(entry, dict):
        raise TuningError(f"{path}: the {backend_name} entry is not an object; rerun `mtp-edge tune {bundle_dir}`.")
    return entry


def backend_name(backend) -> str:
    """A backend's kind as tuning.json names it ("pte", "onnx", ...); takes a backend or its class."""
    cls = backend if isinstance(backend, type) else type(backend)
    return cls.__name__.removesuffix("Backend").lower()


# Timed rounds per round kind in one pass of measure_costs.
ROUNDS_PER_PASS = 3


def measure_costs(backend, max_k: int, repeats: int = 3, *, prompt: list[int] | None = None,
                  sampling: SamplingConfig | None = None) -> CostTable:
    """Time decode, verify at every length 2..max_k+1, one draft step and each one-call draft
    (draft_chain) of 2..max_k tokens the backend has: from position 1 of an empty cache (the caller
    prefills afterwards, which overwrites these positions), or, given a prompt (`mtp-edge tune`),
    right after prefilling it, where the first round would run; the cache is rolled back after.

    The calls are timed as the loop times them, inside its rounds (speculative.speculative_decode:
    a draft step with drawing its token, a verify with the accept rule), each round kind `repeats`
    times in a row: plain rounds, then for each k a round of k drafts (one draft_chain call where
    the backend has one for k and sampling is greedy, else k draft steps); each entry is the median
    of its calls, which leaves out the first round's first-call costs and re-plan when repeats >= 3. `sampling` (default greedy): a sampled run's rounds also
    pay for the float64 distributions of the accept rule and the drafts, which greedy rounds do not.

    Inside rounds, because the calls of a round cost more than each method repeated on its own (a
    draft brings the drafter's weights into cache, then the verify the target's): on the shipped
    pair's .pte, methods timed alone (tune until session 12) predicted 1.17x plain for K=2 where the
    loop measured 1.01x. Rounds of one kind in a row, because a steady loop repeats its round: a
    verify whose token count changes from the previous call is re-planned (XNNPACK), so timing every
    method once in turn (this function until session 12) charged every call a re-plan: a decode of
    1.24 ms where plain decoding ran at 0.88, and auto drafting at 0.93x plain. Switching costs are
    left to the policy's stickiness and hysteresis. 37-48 ms on the shipped pair's .pte at 3 repeats
    (six calls, idle machine; the issue allows about 50).

    More than ROUNDS_PER_PASS repeats (tune) run in passes over all round kinds, so that a slow stretch
    of the machine (another process, a throttled core) falls on every kind's samples rather than on
    one kind's whole block, which skews the ratios the policy decides from."""
    from .sampling import SplitMix64
    from .speculative import speculative_decode

    sampling = sampling or SamplingConfig()
    if prompt is None:
        _, hidden = backend.verify(torch.zeros(1, dtype=torch.long), 0)
        start, last, hidden = 1, 0, hidden[-1]
    else:
        _, hidden = backend.prefill(torch.tensor(prompt, dtype=torch.long))
        start, last = len(prompt), int(prompt[-1])
    chains = set(getattr(backend, "draft_chains", ())) if sampling.greedy else set()
    samples: dict = {}

    def timer(kind: str, n: int, seconds: float) -> None:
        samples.setdefault((kind, n), []).append(seconds)

    rng = SplitMix64(sampling.seed)
    kinds = range(max_k + 1 if backend.has_drafter else 1)
    if repeats <= ROUNDS_PER_PASS:  # the live warm-up: one pass, every round timed
        passes, untimed = [repeats], 0
    else:  # tune: passes of ROUNDS_PER_PASS timed rounds per kind, each after one untimed round (its re-plan)
        passes, untimed = [ROUNDS_PER_PASS] * (repeats // ROUNDS_PER_PASS) + [repeats % ROUNDS_PER_PASS], 1
    for timed in filter(None, passes):
        for k in kinds:
            for i in range(untimed + timed):
                speculative_decode(backend, last, hidden, start, k, sampling, rng, timer=timer if i >= untimed else None,
                                   one_call=k in chains)
                backend.rollback(start)
    backend.rollback(0 if prompt is None else start)
    median = {key: statistics.median(times) for key, times in samples.items()}
    return CostTable(decode=median["verify", 1], draft_step=median.get(("draft_step", 1), 0.0),
                     verify={n: median["verify", n] for n in range(2, max_k + 2)},
                     draft_call={k: s for (kind, k), s in median.items() if kind == "draft_call"})


def cost_table(backend, max_k: int, *, frozen: bool, greedy: bool = True) -> tuple[CostTable, str]:
    """The table a generation starts from, and where it came from ("tuning.json", "measured",
    "default"). Frozen runs (seeded rejection-rule sampling) never use live timings; a sampled run
    starts from tuning.json's table timed with sampling's work where it has one."""
    bundle_dir = getattr(backend, "bundle_dir", None)
    if bundle_dir is not None:
        try:
            table = read_tuning(bundle_dir, backend_name(backend), sampled=not greedy)
        except TuningError as e:
            print(f"mtp-edge: warning: {e} Using {'the default' if frozen else 'measured'} costs.", file=sys.stderr)
            table = None
        if table is not None and table.max_k >= max_k:
            return table, TUNING_FILE
    if frozen:
        return default_costs(backend), "default"
    if backend not in _measured or _measured[backend].max_k < max_k:
        _measured[backend] = measure_costs(backend, max_k)
    return _measured[backend], "measured"


def default_costs(backend) -> CostTable:
    """The fixed table a frozen run without tuning.json decides from: the backend's kind's, else the .pte's.
    Takes a backend or its class."""
    return DEFAULT_COSTS_BY_BACKEND.get(backend_name(backend), DEFAULT_COSTS)


def remember(backend, policy: DraftPolicy) -> None:
    """Keep a live generation's cost table, acceptance and probing for the next generation on the same backend."""
    costs, before = policy.costs, _measured.get(backend)
    if not costs.draft_call and before is not None and before.draft_call:  # a sampling run weighed no one-call draft
        costs = replace(costs, draft_call={k: s for k, s in before.draft_call.items() if k <= costs.max_k})
    _measured[backend] = costs
    _acceptance[backend] = policy.acceptance
    _probing[backend] = policy.probing


def starting_acceptance(backend, max_k: int, *, frozen: bool) -> AcceptanceEstimate | None:
    """Where a generation's acceptance estimate starts: the backend's last live generation, else
    tune's measured rates as TUNED_ACCEPTANCE_WEIGHT pseudo-rounds, else (None) the policy's prior.
    A frozen run (seeded rejection-rule sampling) must repeat, so it never starts from an earlier
    generation; tuning.json is a file and repeats."""
    if not frozen:
        last = _acceptance.get(backend)
        if last is not None and last.max_k >= max_k:
            return last
    bundle_dir = getattr(backend, "bundle_dir", None)
    if bundle_dir is None:
        return None
    try:
        rates = read_tuned_acceptance(bundle_dir, backend_name(backend))
    except TuningError:
        return None  # cost_table has warned about this file already
    if not rates or len(rates) < max_k:
        return None
    w = TUNED_ACCEPTANCE_WEIGHT
    return AcceptanceEstimate(len(rates), accepted=tuple(w * a for a in rates), rejected=tuple(w * (1.0 - a) for a in rates))


def make_policy(backend, max_k: int, *, frozen: bool = False, greedy: bool = True) -> tuple[DraftPolicy, str]:
    """The policy a generation starts with. Sampling drafts step by step (its accept rule needs each
    step's distribution), so its policy weighs no one-call draft."""
    costs, source = cost_table(backend, max_k, frozen=frozen, greedy=greedy)
    if not greedy and costs.draft_call:
        costs = replace(costs, draft_call={})
    max_k = min(max_k, costs.max_k)
    acceptance = starting_acceptance(backend, max_k, frozen=frozen)
    probing = None if frozen else _probing.get(backend)  # a frozen run must repeat: it starts afresh
    return DraftPolicy(costs, max_k, acceptance=acceptance, frozen=frozen, probing=probing), source
