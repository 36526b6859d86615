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

void on_token(int64_t token, void* user_data) {
  auto* l = static_cast<Listener*>(user_data);
  if (l->failed) return;
  l->env->CallVoidMethod(l->listener, l->on_token, static_cast<jint>(token));
  if (l->env->ExceptionCheck()) l->failed = true;
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

// Fills counts[5] = {prompt_tokens, new_tokens, rounds, drafted, accepted},
// times[3] = {prefill_s, decode_s, decode_methods_s} and stopReason[0]; returns the new tokens.
JNIEXPORT jintArray JNICALL Java_com_mtpedge_MtpEdgeRunner_nativeGenerate(
    JNIEnv* env, jclass, jlong handle, jintArray prompt, jint k, jint max_new_tokens, jdouble temperature, jint top_k,
    jdouble top_p, jlong seed, jobject listener, jlongArray counts, jdoubleArray times, jobjectArray stop_reason) {
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

  mtp_sampling sampling{static_cast<double>(temperature), static_cast<int64_t>(top_k), static_cast<double>(top_p),
                        static_cast<uint64_t>(seed)};
  mtp_stats stats;
  std::memset(&stats, 0, sizeof stats);
  size_t n = 0;
  char error[kErrorSize] = {0};
  const int rc = mtp_runner_generate(runner, prompt64.data(), prompt64.size(), k, max_new_tokens, &sampling, out.data(),
                                     out.size(), &n, &stats, listener != nullptr ? on_token : nullptr, &l, error,
                                     sizeof error);
  if (l.failed) return nullptr;  // the listener's exception is pending: it reaches the caller
  if (rc != 0) {
    throw_java(env, error[0] ? error : "generation failed");
    return nullptr;
  }

  if (counts != nullptr && env->GetArrayLength(counts) >= 5) {
    const jlong c[5] = {stats.prompt_tokens, stats.new_tokens, stats.rounds, stats.drafted, stats.accepted};
    env->SetLongArrayRegion(counts, 0, 5, c);
  }
  if (times != nullptr && env->GetArrayLength(times) >= 3) {
    const jdouble t[3] = {stats.prefill_s, stats.decode_s, stats.decode_methods_s};
    env->SetDoubleArrayRegion(times, 0, 3, t);
  }
  if (stop_reason != nullptr && env->GetArrayLength(stop_reason) >= 1) {
    char reason[sizeof stats.stop_reason + 1] = {0};
    std::memcpy(reason, stats.stop_reason, sizeof stats.stop_reason);
    jstring s = env->NewStringUTF(reason);
    if (s == nullptr) return nullptr;
    env->SetObjectArrayElement(stop_reason, 0, s);
    env->DeleteLocalRef(s);
  }
  std::vector<jint> tokens(n);
  for (size_t i = 0; i < n; ++i) tokens[i] = static_cast<jint>(out[i]);
  jintArray result = env->NewIntArray(static_cast<jsize>(n));
  if (result == nullptr) return nullptr;
  if (n > 0) env->SetIntArrayRegion(result, 0, static_cast<jsize>(n), tokens.data());
  return result;
}

}  // extern "C"
