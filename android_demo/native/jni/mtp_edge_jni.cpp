// JNI bridge: com.mtpedge.MtpEdgeRunner over the C API of mtp_edge_runner.h.
//
// Only the C API is used (no C++ type of the runner and no exception crosses it); a failure
// becomes a com.mtpedge.MtpEdgeRunner$MtpEdgeException carrying the runner's one-line message,
// the same message the desktop CLI prints. The library has no Android dependency, so the same
// source builds for the desktop JVM (the bridge test) and for the app (NDK).
#include <jni.h>

#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "mtp_edge_runner.h"

namespace {

constexpr const char* kExceptionClass = "com/mtpedge/MtpEdgeRunner$MtpEdgeException";
constexpr size_t kErrorSize = 2048;

void throw_java(JNIEnv* env, const char* message) {
  if (env->ExceptionCheck()) return;  // keep the first exception
  jclass cls = env->FindClass(kExceptionClass);
  if (cls == nullptr) return;  // FindClass left a NoClassDefFoundError pending
  env->ThrowNew(cls, message);
  env->DeleteLocalRef(cls);
}

mtp_runner* handle_of(JNIEnv* env, jlong handle) {
  auto* runner = reinterpret_cast<mtp_runner*>(static_cast<intptr_t>(handle));
  if (runner == nullptr) throw_java(env, "this MtpEdgeRunner is closed");
  return runner;
}

// Streams each accepted token to TokenListener.onToken(int). Once the listener has thrown, no
// further JNI call is made (the runner finishes the request; the exception then reaches Java).
struct Listener {
  JNIEnv* env;
  jobject listener;
  jmethodID on_token;
  bool failed;
};

// texts[index] = the NUL-padded C string `text` (at most size bytes); false with an exception pending.
bool set_text(JNIEnv* env, jobjectArray texts, jsize index, const char* text, size_t size) {
  std::string value(text, strnlen(text, size));
  jstring s = env->NewStringUTF(value.c_str());
  if (s == nullptr) return false;
  env->SetObjectArrayElement(texts, index, s);
  env->DeleteLocalRef(s);
  return !env->ExceptionCheck();
}

void on_token(int64_t token, void* user_data) {
  auto* l = static_cast<Listener*>(user_data);
  if (l->failed) return;
  l->env->CallVoidMethod(l->listener, l->on_token, static_cast<jint>(token));
  if (l->env->ExceptionCheck()) l->failed = true;
}

// Text crosses JNI as UTF-8 byte arrays, converted by Java's own UTF-8 charset: JNI's string
// functions use modified UTF-8, in which a character outside the BMP (an emoji) is not the UTF-8
// the tokenizer reads and writes.
jbyteArray to_java_bytes(JNIEnv* env, const char* data, size_t size) {
  jbyteArray bytes = env->NewByteArray(static_cast<jsize>(size));
  if (bytes != nullptr && size > 0) env->SetByteArrayRegion(bytes, 0, static_cast<jsize>(size), reinterpret_cast<const jbyte*>(data));
  return bytes;
}

// The bytes of a Java byte[] as a string; false with an exception pending.
bool from_java_bytes(JNIEnv* env, jbyteArray bytes, std::string& out) {
  if (bytes == nullptr) {
    throw_java(env, "text must not be null");
    return false;
  }
  out.resize(static_cast<size_t>(env->GetArrayLength(bytes)));
  if (!out.empty()) env->GetByteArrayRegion(bytes, 0, static_cast<jsize>(out.size()), reinterpret_cast<jbyte*>(&out[0]));
  return !env->ExceptionCheck();
}

jintArray to_java_ints(JNIEnv* env, const int64_t* values, size_t n) {
  std::vector<jint> ints(values, values + n);
  jintArray result = env->NewIntArray(static_cast<jsize>(n));
  if (result != nullptr && n > 0) env->SetIntArrayRegion(result, 0, static_cast<jsize>(n), ints.data());
  return result;
}

// Streams the text of each accepted token to the Java sink's piece(int token, byte[] utf8), as
// Listener does for tokens.
struct TextSink {
  JNIEnv* env;
  jobject sink;
  jmethodID piece;
  bool failed;
};

void on_text(int64_t token, const char* text, size_t length, void* user_data) {
  auto* t = static_cast<TextSink*>(user_data);
  if (t->failed) return;
  jbyteArray bytes = to_java_bytes(t->env, text, length);
  if (bytes == nullptr) {
    t->failed = true;
    return;
  }
  t->env->CallVoidMethod(t->sink, t->piece, static_cast<jint>(token), bytes);
  t->env->DeleteLocalRef(bytes);
  if (t->env->ExceptionCheck()) t->failed = true;
}

// The sampling and drafting arguments of a generate call, owning the cost table's text (copied out
// of the Java string, released before any callback runs).
struct Settings {
  mtp_sampling sampling;
  mtp_draft draft;
  std::string costs;
};

bool read_settings(JNIEnv* env, jdouble temperature, jint top_k, jdouble top_p, jlong seed, jint rule, jint max_k,
                   jdouble draft_p_min, jstring costs_json, Settings& out) {
  if (costs_json != nullptr) {
    const char* text = env->GetStringUTFChars(costs_json, nullptr);
    if (text == nullptr) return false;  // OutOfMemoryError pending
    out.costs = text;
    env->ReleaseStringUTFChars(costs_json, text);
  }
  out.sampling = mtp_sampling{static_cast<double>(temperature), static_cast<int64_t>(top_k), static_cast<double>(top_p),
                              static_cast<uint64_t>(seed), static_cast<int32_t>(rule)};
  out.draft = mtp_draft{static_cast<int64_t>(max_k), static_cast<double>(draft_p_min),
                        costs_json != nullptr ? out.costs.c_str() : nullptr};
  return true;
}

// counts[10], times[3] and texts[2] as nativeGenerate documents them; false with an exception pending.
bool write_stats(JNIEnv* env, const mtp_stats& stats, jlongArray counts, jdoubleArray times, jobjectArray texts) {
  if (counts != nullptr && env->GetArrayLength(counts) >= 10) {
    const jlong c[10] = {stats.prompt_tokens, stats.new_tokens, stats.rounds, stats.drafted, stats.accepted,
                         stats.early_stops, stats.plain_rounds, stats.probe_rounds, stats.auto_k, stats.costs_frozen};
    env->SetLongArrayRegion(counts, 0, 10, c);
  }
  if (times != nullptr && env->GetArrayLength(times) >= 3) {
    const jdouble t[3] = {stats.prefill_s, stats.decode_s, stats.decode_methods_s};
    env->SetDoubleArrayRegion(times, 0, 3, t);
  }
  if (texts != nullptr && env->GetArrayLength(texts) >= 2) {
    if (!set_text(env, texts, 0, stats.stop_reason, sizeof stats.stop_reason)) return false;
    if (!set_text(env, texts, 1, stats.cost_source, sizeof stats.cost_source)) return false;
  }
  return true;
}

}  // namespace

extern "C" {

JNIEXPORT jlong JNICALL Java_com_mtpedge_MtpEdgeRunner_nativeOpen(JNIEnv* env, jclass, jstring bundle_dir) {
  if (bundle_dir == nullptr) {
    throw_java(env, "bundleDir must not be null");
    return 0;
  }
  const char* dir = env->GetStringUTFChars(bundle_dir, nullptr);
  if (dir == nullptr) return 0;  // OutOfMemoryError pending
  char error[kErrorSize] = {0};
  mtp_runner* runner = mtp_runner_open(dir, error, sizeof error);
  env->ReleaseStringUTFChars(bundle_dir, dir);
  if (runner == nullptr) {
    throw_java(env, error[0] ? error : "the bundle could not be opened");
    return 0;
  }
  return static_cast<jlong>(reinterpret_cast<intptr_t>(runner));
}

JNIEXPORT void JNICALL Java_com_mtpedge_MtpEdgeRunner_nativeClose(JNIEnv*, jclass, jlong handle) {
  mtp_runner_close(reinterpret_cast<mtp_runner*>(static_cast<intptr_t>(handle)));
}

// which: 0 = largest K (0 without a drafter), 1 = max_seq_len, 2 = vocab_size.
JNIEXPORT jlong JNICALL Java_com_mtpedge_MtpEdgeRunner_nativeInfo(JNIEnv* env, jclass, jlong handle, jint which) {
  mtp_runner* runner = handle_of(env, handle);
  if (runner == nullptr) return 0;
  switch (which) {
    case 0: return static_cast<jlong>(mtp_runner_max_draft(runner));
    case 1: return static_cast<jlong>(mtp_runner_max_seq_len(runner));
    case 2: return static_cast<jlong>(mtp_runner_vocab_size(runner));
    default: throw_java(env, "nativeInfo: unknown field"); return 0;
  }
}

// Fills counts[10] = {prompt_tokens, new_tokens, rounds, drafted, accepted, early_stops, plain_rounds,
// probe_rounds, auto_k, costs_frozen}, times[3] = {prefill_s, decode_s, decode_methods_s} and
// texts[2] = {stop_reason, cost_source}; returns the new tokens. k = -1: auto (MTP_K_AUTO);
// max_k = -1: the bundle's K; draft_p_min < 0: none; costs_json null: timed on the device.
JNIEXPORT jintArray JNICALL Java_com_mtpedge_MtpEdgeRunner_nativeGenerate(
    JNIEnv* env, jclass, jlong handle, jintArray prompt, jint k, jint max_new_tokens, jdouble temperature, jint top_k,
    jdouble top_p, jlong seed, jint rule, jint max_k, jdouble draft_p_min, jstring costs_json, jobject listener,
    jlongArray counts, jdoubleArray times, jobjectArray texts) {
  mtp_runner* runner = handle_of(env, handle);
  if (runner == nullptr) return nullptr;
  if (prompt == nullptr) {
    throw_java(env, "prompt must not be null");
    return nullptr;
  }
  const jsize prompt_len = env->GetArrayLength(prompt);
  std::vector<int64_t> prompt64;
  std::vector<int64_t> out;
  try {
    prompt64.resize(static_cast<size_t>(prompt_len));
    out.resize(static_cast<size_t>(max_new_tokens > 0 ? max_new_tokens : 1));
  } catch (const std::bad_alloc&) {
    throw_java(env, "out of memory for the prompt or the output tokens");
    return nullptr;
  }
  {
    std::vector<jint> ids(static_cast<size_t>(prompt_len));
    if (prompt_len > 0) env->GetIntArrayRegion(prompt, 0, prompt_len, ids.data());
    for (jsize i = 0; i < prompt_len; ++i) prompt64[static_cast<size_t>(i)] = ids[static_cast<size_t>(i)];
  }

  Listener l{env, listener, nullptr, false};
  if (listener != nullptr) {
    jclass cls = env->GetObjectClass(listener);
    l.on_token = env->GetMethodID(cls, "onToken", "(I)V");
    env->DeleteLocalRef(cls);
    if (l.on_token == nullptr) return nullptr;  // NoSuchMethodError pending
  }

  Settings settings;
  if (!read_settings(env, temperature, top_k, top_p, seed, rule, max_k, draft_p_min, costs_json, settings)) return nullptr;
  mtp_stats stats;
  std::memset(&stats, 0, sizeof stats);
  size_t n = 0;
  char error[kErrorSize] = {0};
  const int rc = mtp_runner_generate(runner, prompt64.data(), prompt64.size(), k, max_new_tokens,
                                     &settings.sampling, &settings.draft, out.data(), out.size(), &n, &stats,
                                     listener != nullptr ? on_token : nullptr, &l, error, sizeof error);
  if (l.failed) return nullptr;  // the listener's exception is pending: it reaches the caller
  if (rc != 0) {
    throw_java(env, error[0] ? error : "generation failed");
    return nullptr;
  }
  if (!write_stats(env, stats, counts, times, texts)) return nullptr;
  return to_java_ints(env, out.data(), n);
}

// nativeGenerate with a text prompt (UTF-8 bytes): the new tokens' text goes to sink.piece(int
// token, byte[] utf8) as whole characters arrive (token -1: what the end left unfinished, as U+FFFD),
// and as a whole to nativeLastText.
JNIEXPORT jintArray JNICALL Java_com_mtpedge_MtpEdgeRunner_nativeGenerateText(
    JNIEnv* env, jclass, jlong handle, jbyteArray prompt, jint k, jint max_new_tokens, jdouble temperature, jint top_k,
    jdouble top_p, jlong seed, jint rule, jint max_k, jdouble draft_p_min, jstring costs_json, jobject sink,
    jlongArray counts, jdoubleArray times, jobjectArray texts, jboolean chat) {
  mtp_runner* runner = handle_of(env, handle);
  if (runner == nullptr) return nullptr;
  std::string text;  // the prompt's text, or with `chat` a JSON array of messages
  if (!from_java_bytes(env, prompt, text)) return nullptr;
  std::vector<int64_t> out;
  try {
    out.resize(static_cast<size_t>(max_new_tokens > 0 ? max_new_tokens : 1));
  } catch (const std::bad_alloc&) {
    throw_java(env, "out of memory for the output tokens");
    return nullptr;
  }
  TextSink t{env, sink, nullptr, false};
  if (sink != nullptr) {
    jclass cls = env->GetObjectClass(sink);
    t.piece = env->GetMethodID(cls, "piece", "(I[B)V");
    env->DeleteLocalRef(cls);
    if (t.piece == nullptr) return nullptr;  // NoSuchMethodError pending
  }
  Settings settings;
  if (!read_settings(env, temperature, top_k, top_p, seed, rule, max_k, draft_p_min, costs_json, settings)) return nullptr;
  mtp_stats stats;
  std::memset(&stats, 0, sizeof stats);
  size_t n = 0;
  char error[kErrorSize] = {0};
  const auto generate = chat ? mtp_runner_generate_chat : mtp_runner_generate_text;
  const int rc = generate(runner, text.c_str(), k, max_new_tokens, &settings.sampling, &settings.draft, out.data(),
                          out.size(), &n, &stats, sink != nullptr ? on_text : nullptr, &t, error, sizeof error);
  if (t.failed) return nullptr;  // the sink's exception is pending: it reaches the caller
  if (rc != 0) {
    throw_java(env, error[0] ? error : "generation failed");
    return nullptr;
  }
  if (!write_stats(env, stats, counts, times, texts)) return nullptr;
  return to_java_ints(env, out.data(), n);
}

JNIEXPORT jboolean JNICALL Java_com_mtpedge_MtpEdgeRunner_nativeHasChatTemplate(JNIEnv* env, jclass, jlong handle) {
  mtp_runner* runner = handle_of(env, handle);
  return runner != nullptr && mtp_runner_has_chat_template(runner) ? JNI_TRUE : JNI_FALSE;
}

// The text of the last nativeGenerateText, as UTF-8 bytes.
JNIEXPORT jbyteArray JNICALL Java_com_mtpedge_MtpEdgeRunner_nativeLastText(JNIEnv* env, jclass, jlong handle) {
  mtp_runner* runner = handle_of(env, handle);
  if (runner == nullptr) return nullptr;
  std::vector<char> text(mtp_runner_last_text(runner, nullptr, 0) + 1);
  const size_t n = mtp_runner_last_text(runner, text.data(), text.size());
  return to_java_bytes(env, text.data(), n);
}

// The ids of a text (UTF-8 bytes) with the tokenizer's special tokens (BOS).
JNIEXPORT jintArray JNICALL Java_com_mtpedge_MtpEdgeRunner_nativeEncode(JNIEnv* env, jclass, jlong handle, jbyteArray utf8) {
  mtp_runner* runner = handle_of(env, handle);
  if (runner == nullptr) return nullptr;
  std::string text;
  if (!from_java_bytes(env, utf8, text)) return nullptr;
  char error[kErrorSize] = {0};
  size_t n = 0;
  if (mtp_runner_encode(runner, text.c_str(), nullptr, 0, &n, error, sizeof error) != 0) {
    throw_java(env, error[0] ? error : "encoding failed");
    return nullptr;
  }
  std::vector<int64_t> ids(n);
  mtp_runner_encode(runner, text.c_str(), ids.data(), ids.size(), &n, error, sizeof error);
  return to_java_ints(env, ids.data(), ids.size());
}

// A chat (a JSON array of messages, UTF-8 bytes) through the bundle's chat template: which = 0, the
// prompt ids (encoded without the tokenizer's special tokens: the template writes BOS) as int[];
// which = 1, the rendered text as UTF-8 bytes.
JNIEXPORT jobject JNICALL Java_com_mtpedge_MtpEdgeRunner_nativeChat(JNIEnv* env, jclass, jlong handle, jbyteArray utf8,
                                                                    jint which) {
  mtp_runner* runner = handle_of(env, handle);
  if (runner == nullptr) return nullptr;
  std::string messages;
  if (!from_java_bytes(env, utf8, messages)) return nullptr;
  char error[kErrorSize] = {0};
  size_t n = 0;
  if (which == 0) {
    if (mtp_runner_encode_chat(runner, messages.c_str(), nullptr, 0, &n, error, sizeof error) != 0) {
      throw_java(env, error[0] ? error : "chat encoding failed");
      return nullptr;
    }
    std::vector<int64_t> ids(n);
    mtp_runner_encode_chat(runner, messages.c_str(), ids.data(), ids.size(), &n, error, sizeof error);
    return to_java_ints(env, ids.data(), ids.size());
  }
  if (mtp_runner_chat_text(runner, messages.c_str(), nullptr, 0, &n, error, sizeof error) != 0) {
    throw_java(env, error[0] ? error : "chat rendering failed");
    return nullptr;
  }
  std::vector<char> text(n + 1);
  mtp_runner_chat_text(runner, messages.c_str(), text.data(), text.size(), &n, error, sizeof error);
  return to_java_bytes(env, text.data(), n);
}

// The text of token ids, as UTF-8 bytes (invalid sequences as U+FFFD).
JNIEXPORT jbyteArray JNICALL Java_com_mtpedge_MtpEdgeRunner_nativeDecode(JNIEnv* env, jclass, jlong handle, jintArray ids) {
  mtp_runner* runner = handle_of(env, handle);
  if (runner == nullptr) return nullptr;
  if (ids == nullptr) {
    throw_java(env, "tokens must not be null");
    return nullptr;
  }
  const jsize len = env->GetArrayLength(ids);
  std::vector<jint> ints(static_cast<size_t>(len));
  if (len > 0) env->GetIntArrayRegion(ids, 0, len, ints.data());
  const std::vector<int64_t> ids64(ints.begin(), ints.end());
  char error[kErrorSize] = {0};
  size_t n = 0;
  if (mtp_runner_decode(runner, ids64.data(), ids64.size(), nullptr, 0, &n, error, sizeof error) != 0) {
    throw_java(env, error[0] ? error : "decoding failed");
    return nullptr;
  }
  std::vector<char> text(n + 1);
  mtp_runner_decode(runner, ids64.data(), ids64.size(), text.data(), text.size(), &n, error, sizeof error);
  return to_java_bytes(env, text.data(), n);
}

// The last successful generation's details. which: 0 = rounds per draft length (index = tokens
// drafted), 1 = k = auto: rounds per planned K; an empty array when there are none.
JNIEXPORT jlongArray JNICALL Java_com_mtpedge_MtpEdgeRunner_nativeLastHistogram(JNIEnv* env, jclass, jlong handle, jint which) {
  mtp_runner* runner = handle_of(env, handle);
  if (runner == nullptr) return nullptr;
  auto get = which == 0 ? mtp_runner_last_k_histogram : mtp_runner_last_planned_histogram;
  std::vector<int64_t> counts(get(runner, nullptr, 0));
  get(runner, counts.data(), counts.size());
  jlongArray result = env->NewLongArray(static_cast<jsize>(counts.size()));
  if (result == nullptr) return nullptr;
  std::vector<jlong> values(counts.begin(), counts.end());
  if (!values.empty()) env->SetLongArrayRegion(result, 0, static_cast<jsize>(values.size()), values.data());
  return result;
}

// which: 0 = the cost table {decode, draft_step, verify[2], ..., verify[K + 1]} (seconds), 1 = the
// acceptance estimate a_1..a_max_k; an empty array when the last generation had no policy.
JNIEXPORT jdoubleArray JNICALL Java_com_mtpedge_MtpEdgeRunner_nativeLastPolicy(JNIEnv* env, jclass, jlong handle, jint which) {
  mtp_runner* runner = handle_of(env, handle);
  if (runner == nullptr) return nullptr;
  std::vector<double> values;
  if (which == 0) {
    const size_t k = mtp_runner_last_costs(runner, nullptr, nullptr, nullptr, 0);
    if (mtp_runner_last_planned_histogram(runner, nullptr, 0) > 0) {  // the last generation had a policy
      values.resize(2 + k);
      mtp_runner_last_costs(runner, &values[0], &values[1], values.data() + 2, k);
    }
  } else {
    values.resize(mtp_runner_last_acceptance(runner, nullptr, 0));
    mtp_runner_last_acceptance(runner, values.data(), values.size());
  }
  jdoubleArray result = env->NewDoubleArray(static_cast<jsize>(values.size()));
  if (result == nullptr) return nullptr;
  if (!values.empty()) env->SetDoubleArrayRegion(result, 0, static_cast<jsize>(values.size()), values.data());
  return result;
}

// The last generation's statistics as the desktop CLI writes them (one JSON object), "" before any.
JNIEXPORT jstring JNICALL Java_com_mtpedge_MtpEdgeRunner_nativeLastStatsJson(JNIEnv* env, jclass, jlong handle) {
  mtp_runner* runner = handle_of(env, handle);
  if (runner == nullptr) return nullptr;
  std::vector<char> text(mtp_runner_last_stats_json(runner, nullptr, 0) + 1);
  mtp_runner_last_stats_json(runner, text.data(), text.size());
  return env->NewStringUTF(text.data());  // ASCII only: numbers, keys and fixed words
}

}  // extern "C"
