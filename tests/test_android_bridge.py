"""The Android app's Java API (com.mtpedge.MtpEdgeRunner) over the JNI bridge, on a desktop JVM.

The JNI library is the `mtp_edge_jni` target of android_demo/native, built with the runner by
runtime/native/build.py (same cache folder); the Java class and the test driver
(tests/java/com/mtpedge/BridgeDriver.java) are compiled with javac and run with
`java -Djava.library.path=...`. The driver answers one JSON line per command. The JVM must give
the Python pte backend's tokens (greedy and seeded sampling, fixed K and K auto), stream exactly
the tokens it returns, report the draft policy's decisions in lastStats() (K histogram, plain
rounds, cost table), and turn every native failure into a Java exception carrying the runner's message.
Skipped without a JDK (javac, java). Reuses the tiny-pair bundle of tests/test_native_runner.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mtp_edge.export.bundle import MANIFEST, PROGRAM_FILE
from mtp_edge.export.manifest import SCHEMA_VERSION
from mtp_edge.runtime.native import build, validate
from mtp_edge.runtime.backends.pte import PteBackend
from mtp_edge.runtime.draft_policy import DraftPolicy
from mtp_edge.runtime.speculative import generate
from test_native_runner import (COSTS, COUPLED, GREEDY, K, MAX_SEQ, SAMPLING, TOP_K, _rand,  # noqa: F401 - fixture
                                tiny_bundle)

ROOT = Path(__file__).resolve().parents[1]
JAVA_SOURCES = [ROOT / "android_demo/app/src/main/java/com/mtpedge/MtpEdgeRunner.java",
                ROOT / "tests/java/com/mtpedge/BridgeDriver.java"]
EXCEPTION = "com.mtpedge.MtpEdgeRunner$MtpEdgeException"

pytestmark = [pytest.mark.skipif(not (shutil.which("javac") and shutil.which("java")), reason="needs a JDK (javac, java)"),
              pytest.mark.native, pytest.mark.xdist_group("tiny-portable")]  # the worker of test_native_runner's tiny tests


@pytest.fixture(scope="module")
def jni_library() -> Path:
    return build.jni_library(progress=False)


@pytest.fixture(scope="module")
def java_classes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("java")
    # --release 11: the language level the app's build.gradle sets; -Werror: no lint warning either.
    done = subprocess.run(["javac", "--release", "11", "-Xlint:all", "-Werror", "-d", str(out), *map(str, JAVA_SOURCES)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out


def _jvm(jni_library, java_classes, commands: list[str], timeout: float = 300) -> list[dict]:
    done = subprocess.run(["java", "-Xcheck:jni", f"-Djava.library.path={jni_library.parent}", "-cp", str(java_classes),
                           "com.mtpedge.BridgeDriver"],
                          input="".join(c + "\n" for c in commands), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "WARNING" not in done.stderr, done.stderr[-2000:]  # -Xcheck:jni: no JNI misuse (e.g. a call with an exception pending)
    answers = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(answers) == len(commands), (done.stdout, done.stderr[-2000:])
    return answers


def _gen(prompt, k, max_new_tokens, s) -> str:
    # The decimal text of each float: the Java side parses it as a float and passes the double of its decimal text.
    return " ".join(map(str, ["gen", k, max_new_tokens, repr(s.temperature), s.top_k, repr(s.top_p), s.seed, *prompt]))


def test_jvm_tokens_equal_python(jni_library, java_classes, tiny_bundle):  # noqa: F811
    prompts = [_rand(10 + n, n) for n in (1, 6, 13)]
    cases = [(K, GREEDY), (K, SAMPLING), (K, TOP_K), (0, GREEDY), (0, SAMPLING)]
    max_new = 2 * MAX_SEQ  # into the end of the cache
    answers = _jvm(jni_library, java_classes,
                   [f"open {tiny_bundle}"] + [_gen(p, k, max_new, s) for k, s in cases for p in prompts] + ["close"])
    opened, ours, closed = answers[0], answers[1:-1], answers[-1]
    assert opened == {"op": "open", "max_draft": K, "max_seq_len": MAX_SEQ, "vocab_size": 512}
    assert closed == {"op": "close"}

    backend = PteBackend(tiny_bundle)
    theirs = [generate(backend, p, k=k, max_new_tokens=max_new, sampling=s, eos_ids=backend.eos_ids)
              for k, s in cases for p in prompts]
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert "exception" not in a, a
        assert a["tokens"] == b.tokens, f"generation {i}"
        assert a["streamed"] == a["tokens"], f"generation {i}: the listener saw every token, in order"
        st, s = a["stats"], b.stats
        assert (st["stop_reason"], st["rounds"], st["drafted"], st["accepted"], st["new_tokens"], st["prompt_tokens"]) == (
            s.stop_reason, s.rounds, s.drafted, s.accepted, s.new_tokens, s.prompt_tokens), f"generation {i}"
        assert st["acceptance_rate"] == pytest.approx(st["accepted"] / st["drafted"] if st["drafted"] else 0.0)
        assert st["decode_s"] >= st["decode_methods_s"] >= 0 and st["tokens_per_s"] >= 0
    spec, plain = ours[:3], ours[9:12]
    assert [r["tokens"] for r in spec] == [r["tokens"] for r in plain]  # greedy speculative is lossless through the JVM too
    assert any(r["stats"]["stop_reason"] == "cache_full" for r in spec)
    assert sum(r["stats"]["drafted"] - r["stats"]["accepted"] for r in spec) > 0


def test_jvm_auto_k_and_last_stats(jni_library, java_classes, tiny_bundle):  # noqa: F811
    """K auto through Java: with a frozen cost table the Python runtime's tokens and decisions, read back
    from lastStats() (K histogram, planned K, plain rounds, acceptance, cost table); coupled sampling's
    tokens are K = 0's; without a table the device's own timings (cost source "measured")."""
    prompts = [_rand(40 + n, n) for n in (3, 11)]
    costs = json.dumps(COSTS.to_json(), separators=(",", ":"))
    max_new = 2 * MAX_SEQ
    commands = ([f"open {tiny_bundle}", f"set costs={costs} p_min=0.0"]
                + [_gen(p, "auto", max_new, s) for s in (GREEDY, SAMPLING) for p in prompts]
                + [f"set rule=coupled max_k=2 costs={costs}"] + [_gen(p, "auto", max_new, COUPLED) for p in prompts]
                + ["set rule=coupled"] + [_gen(p, 0, max_new, COUPLED) for p in prompts]
                + ["set"] + [_gen(prompts[0], "auto", 30, GREEDY), _gen(prompts[0], 0, 30, GREEDY), "close"])
    answers = _jvm(jni_library, java_classes, commands)
    assert all("exception" not in a for a in answers), answers
    n = len(prompts)
    frozen, coupled_auto, coupled_plain = answers[2:2 + 2 * n], answers[3 + 2 * n:3 + 3 * n], answers[4 + 3 * n:4 + 4 * n]
    measured, plain = answers[-3], answers[-2]

    backend = PteBackend(tiny_bundle)
    cases = [(GREEDY, 0.0, None)] * n + [(SAMPLING, 0.0, None)] * n + [(COUPLED, None, 2)] * n
    theirs = [generate(backend, p, k="auto", max_k=max_k, draft_p_min=p_min, max_new_tokens=max_new, sampling=s,
                       eos_ids=backend.eos_ids, policy=DraftPolicy(COSTS, max_k or K, frozen=True))
              for (s, p_min, max_k), p in zip(cases, prompts * 3)]
    for i, (a, b) in enumerate(zip(frozen + coupled_auto, theirs, strict=True)):
        assert a["tokens"] == b.tokens and a["streamed"] == a["tokens"], f"generation {i}"
        st, s, policy = a["stats"], b.stats, b.stats.policy
        histogram = [s.k_histogram.get(d, 0) for d in range(max(s.k_histogram) + 1)]
        assert (st["k_histogram"], st["plain_rounds"], st["early_stops"]) == (histogram, histogram[0], s.early_stops), i
        assert st["k_histogram_text"] == " ".join(f"{d}:{c}" for d, c in s.k_histogram.items()), i
        assert st["auto_k"] and st["costs_frozen"] and st["cost_source"] == "given", i
        assert st["planned_k_histogram"] == [policy["k_histogram"].get(k, 0) for k in range(len(st["planned_k_histogram"]))], i
        assert (st["probe_rounds"], st["acceptance"]) == (policy["probe_rounds"], policy["acceptance"]), i
        assert st["costs"] == {"decode": COSTS.decode, "draft_step": COSTS.draft_step, "verify": list(COSTS.verify.values())}, i
        assert st["native"]["k_histogram"] == {str(d): c for d, c in s.k_histogram.items()}, i
    assert sum(a["stats"]["drafted"] for a in frozen) > 0 and sum(a["stats"]["plain_rounds"] for a in frozen) > 0
    assert all(len(a["stats"]["planned_k_histogram"]) == 3 for a in coupled_auto)  # max_k = 2: K 0..2
    assert [a["tokens"] for a in coupled_auto] == [a["tokens"] for a in coupled_plain]  # coupled: K does not matter
    assert measured["tokens"] == plain["tokens"]
    st = measured["stats"]
    assert st["auto_k"] and not st["costs_frozen"] and st["cost_source"] == "measured" and len(st["costs"]["verify"]) == K
    assert not plain["stats"]["auto_k"] and plain["stats"]["costs"] is None and plain["stats"]["cost_source"] is None


def test_jvm_errors_are_java_exceptions(jni_library, java_classes, tiny_bundle, tmp_path):  # noqa: F811
    modified = tmp_path / "modified"
    shutil.copytree(tiny_bundle, modified)
    data = bytearray((modified / PROGRAM_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 can tell
    (modified / PROGRAM_FILE).write_bytes(bytes(data))
    schema = tmp_path / "schema99"
    shutil.copytree(tiny_bundle, schema)
    manifest = json.loads((schema / MANIFEST).read_text())
    manifest["schema_version"] = 99
    (schema / MANIFEST).write_text(json.dumps(manifest))

    answers = _jvm(jni_library, java_classes, [
        f"open {tmp_path / 'nowhere'}",
        f"open {modified}",
        f"open {schema}",
        f"open {tiny_bundle}",
        _gen([1] * MAX_SEQ, 0, 4, GREEDY),
        _gen([1, 2], K + 1, 4, GREEDY),
        "throw_after 2 " + " ".join(map(str, [K, 8, 1, 2, 3])),
        _gen([1, 2, 3], K, 8, GREEDY),  # the runner still works after those
        "close",
        _gen([1, 2, 3], K, 8, GREEDY),
        f"open {tiny_bundle}",  # bad drafting options: the runner's messages, the runner still usable
        f"set max_k={K + 1}",
        _gen([1, 2, 3], "auto", 8, GREEDY),
        "set costs={\"decode\":1.0}",
        _gen([1, 2, 3], "auto", 8, GREEDY),
        "set p_min=1.5",
        _gen([1, 2, 3], "auto", 8, GREEDY),
        "set",
        _gen([1, 2, 3], -2, 8, GREEDY),
        _gen([1, 2, 3], "auto", 8, GREEDY),
    ])
    for a in answers[:3] + answers[4:6] + answers[9:10]:
        assert a.get("exception") == EXCEPTION, a
    assert "nowhere: not a folder. Pass a bundle folder written by `mtp-edge export`." in answers[0]["message"]
    assert ("artifact model.pte was modified after export (sha256 does not match manifest.json); export the bundle again."
            in answers[1]["message"])
    assert f"bundle schema_version 99 is not supported; this runner reads schema_version {SCHEMA_VERSION}" in answers[2]["message"]
    assert answers[3]["op"] == "open" and "exception" not in answers[3]
    assert f"the prompt has {MAX_SEQ} tokens but the cache holds {MAX_SEQ} positions" in answers[4]["message"]
    assert f"K={K + 1} is not available on this bundle: it was built for K <= {K}." in answers[5]["message"]
    # A listener's own exception reaches the caller unchanged (no further callback once it threw).
    assert answers[6] == {"op": "throw_after", "exception": "java.lang.IllegalStateException",
                          "message": "listener stopped at token 2"}
    assert "exception" not in answers[7] and answers[7]["streamed"] == answers[7]["tokens"] and answers[7]["tokens"]
    assert answers[8] == {"op": "close"}
    assert answers[9]["message"] == "this MtpEdgeRunner is closed"
    bad = [answers[i] for i in (12, 14, 16, 18)]
    assert all(a.get("exception") == EXCEPTION for a in bad), bad
    assert f"max_k must be in 0..{K} on this bundle, got {K + 1}." in bad[0]["message"]
    assert "cost table: missing field(s) draft_step, verify." in bad[1]["message"]
    assert "draft_p_min must be a probability in [0, 1], got 1.5." in bad[2]["message"]
    assert "K (draft tokens per round) must be >= 0 or auto, got -2." in bad[3]["message"]
    assert "exception" not in answers[19] and answers[19]["stats"]["auto_k"] and answers[19]["tokens"]


def test_jvm_text_in_and_out(jni_library, java_classes, tiny_bundle, tmp_path):  # noqa: F811
    """generateText / encode / decode through Java: the shipped tokenizer.json beside a copy of the tiny
    bundle (the runner reads one there when the manifest lists none). The prompt's ids and the text of
    the new ids are Python's; the text streams in whole characters (an emoji crosses JNI intact); a
    bundle without a tokenizer throws the runner's message and still generates from ids."""
    import base64

    from mtp_edge.runtime.tokenizer import TextCodec
    from test_native_text import SHIPPED_TOKENIZER

    bundle = tmp_path / "with-tokenizer"
    shutil.copytree(tiny_bundle, bundle)
    shutil.copy(SHIPPED_TOKENIZER, bundle / "tokenizer.json")
    codec = TextCodec(SHIPPED_TOKENIZER)
    prompt, emoji = "# the value of the", "naïve 😀 日本"
    assert max(codec.encode(prompt)) < 512  # the tiny model's vocabulary
    b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    emoji_ids = codec.encode(emoji)
    answers = _jvm(jni_library, java_classes, [
        f"open {bundle}", f"text {K} 24 {b64(prompt)}", f"encode {b64(emoji)}", "decode " + " ".join(map(str, emoji_ids)),
        f"open {tiny_bundle}", f"text {K} 4 {b64(prompt)}", _gen([2, 5, 7], K, 4, GREEDY), "close"])
    assert all("exception" not in a for a in answers[:4]), answers
    text = answers[1]
    assert text["prompt_tokens"] == codec.encode(prompt)
    assert text["text"] == codec.decode(text["tokens"]) and len(text["tokens"]) == 24
    assert "".join(text["pieces"]) == text["text"] and text["piece_tokens"][:len(text["tokens"])] == text["tokens"]
    ids = validate.run_requests(tiny_bundle, [validate.request(codec.encode(prompt), k=K, max_new_tokens=24)],
                                runner=jni_library.with_name("mtp_edge_runner"))[0]
    assert text["tokens"] == ids.tokens  # the same generation as from ids
    assert answers[2]["ids"] == emoji_ids and answers[3]["text"] == codec.decode(emoji_ids) == "<bos>" + emoji
    assert answers[5].get("exception") == EXCEPTION and "no tokenizer.json" in answers[5]["message"]
    assert "exception" not in answers[6] and answers[6]["tokens"]


def test_jvm_chat_through_the_template(jni_library, java_classes, tiny_bundle, tmp_path):  # noqa: F811
    """encodeChat / chatText / userTurn / hasChatTemplate / generateChat through Java (JNI over the C API's
    mtp_runner_encode_chat, mtp_runner_chat_text, mtp_runner_has_chat_template and
    mtp_runner_generate_chat): a Gemma-style chat template beside a copy of the tiny bundle renders and
    encodes as the Python runtime (transformers' renderer) does; the chat generates the Python pte
    backend's tokens, its text streamed; a bundle without a template, or messages the template refuses,
    throw the runner's message."""
    import base64

    from mtp_edge.runtime.tokenizer import ChatTemplate, TextCodec
    from test_chat_template import GEMMA_TEMPLATE, add_artifacts, pad_vocabulary, write_checkpoint_files

    folder = write_checkpoint_files(tmp_path / "tok", GEMMA_TEMPLATE)
    pad_vocabulary(folder / "tokenizer.json", 512)  # the tiny model's
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    add_artifacts(bundle, {"tokenizer": folder / "tokenizer.json", "tokenizer_config": folder / "tokenizer_config.json"})
    plain = tmp_path / "no-template"
    shutil.copytree(tiny_bundle, plain)
    add_artifacts(plain, {"tokenizer": folder / "tokenizer.json"})
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello \"there\" \u00e9"}]
    b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    answers = _jvm(jni_library, java_classes, [
        f"open {bundle}", f"chat {b64(json.dumps(chat))}", f'user_turn {b64(chr(34) + "quoted" + chr(34) + chr(10) + "x")}',
        f"chat {b64(json.dumps([{'role': 'user', 'content': 'a'}] * 2))}", "has_chat", f"chatgen {K} 6 {b64(json.dumps(chat))}",
        f"open {plain}", f"chat {b64(json.dumps(chat))}", "has_chat", f"chatgen {K} 6 {b64(json.dumps(chat))}", "close"])
    ours, codec = ChatTemplate.from_folder(bundle), TextCodec(bundle / "tokenizer.json")
    want = ours.render(chat)
    assert answers[1] == {"op": "chat", "ids": codec.encode(want, add_special_tokens=False), "text": want}
    assert json.loads(answers[2]["json"]) == [{"role": "user", "content": '"quoted"\nx'}]  # valid JSON, escapes kept
    assert answers[3].get("exception") == EXCEPTION and "Conversation roles must alternate" in answers[3]["message"]
    assert answers[4] == {"op": "has_chat", "value": True} and answers[8] == {"op": "has_chat", "value": False}
    ids, streamed = answers[1]["ids"], answers[5]
    assert streamed["prompt_tokens"] == ids
    assert streamed["tokens"] == generate(PteBackend(bundle), ids, k=K, max_new_tokens=6).tokens
    assert streamed["text"] == codec.decode(streamed["tokens"]) == "".join(streamed["pieces"])
    for refused in (answers[7], answers[9]):
        assert refused.get("exception") == EXCEPTION and "no chat template" in refused["message"]
