package com.mtpedge;

/**
 * The mtp-edge speculative runner (android_demo/native) from Java, through the JNI bridge
 * {@code libmtp_edge_jni} over the C API of {@code mtp_edge_runner.h}.
 *
 * <p>Uses no {@code android.*} API: the same class runs in the app and on a desktop JVM (the
 * bridge test, tests/test_android_bridge.py). A bundle, prompt, K and sampling seed give the
 * tokens the Python runtime gives. Every native failure (a missing bundle, a modified program,
 * an unknown manifest version, a prompt the cache cannot hold, ...) is thrown as an
 * {@link MtpEdgeException} carrying the runner's one-line message.
 *
 * <p>One instance serves one thread at a time (its methods are synchronized); generate on a
 * background thread in an app, and post streamed tokens to the UI thread yourself.
 */
public final class MtpEdgeRunner implements AutoCloseable {

  /** A failure reported by the native runner; the message names the problem and the fix. */
  public static class MtpEdgeException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public MtpEdgeException(String message) {
      super(message);
    }
  }

  /** Receives every new token as soon as it is accepted (on the thread that called generate). */
  public interface TokenListener {
    void onToken(int token);
  }

  /** Statistics of one generation (as runtime.speculative.GenerationStats). */
  public static final class Stats {
    public final long promptTokens;
    public final long newTokens;
    /** Target verify calls: one per round. */
    public final long rounds;
    public final long drafted;
    public final long accepted;
    public final double prefillSeconds;
    public final double decodeSeconds;
    /** Of decodeSeconds, the time inside ExecuTorch method calls. */
    public final double decodeMethodsSeconds;
    /** "eos", "max_new_tokens" or "cache_full". */
    public final String stopReason;

    Stats(long[] counts, double[] times, String stopReason) {
      this.promptTokens = counts[0];
      this.newTokens = counts[1];
      this.rounds = counts[2];
      this.drafted = counts[3];
      this.accepted = counts[4];
      this.prefillSeconds = times[0];
      this.decodeSeconds = times[1];
      this.decodeMethodsSeconds = times[2];
      this.stopReason = stopReason;
    }

    /** Accepted / drafted draft tokens (0 when nothing was drafted, e.g. K = 0). */
    public double acceptanceRate() {
      return drafted > 0 ? (double) accepted / (double) drafted : 0.0;
    }

    /** Decode speed: tokens after the first (which comes from prefill) per decode second. */
    public double tokensPerSecond() {
      return decodeSeconds > 0 ? (double) (newTokens - 1) / decodeSeconds : 0.0;
    }

    /** Tokens emitted per target verify call. */
    public double tokensPerTargetCall() {
      return rounds > 0 ? (double) (newTokens - 1) / (double) rounds : 0.0;
    }

    @Override
    public String toString() {
      return String.format(java.util.Locale.ROOT,
          "%d new tokens (%s), %d rounds, accepted %d/%d (%.1f%%), %.1f tok/s",
          newTokens, stopReason, rounds, accepted, drafted, 100.0 * acceptanceRate(), tokensPerSecond());
    }
  }

  private static volatile boolean loaded;

  /** Loads libmtp_edge_jni from java.library.path (the app's packaged jniLibs on Android). */
  public static synchronized void load() {
    if (!loaded) {
      System.loadLibrary("mtp_edge_jni");
      loaded = true;
    }
  }

  /** Loads the JNI library from an absolute path (desktop use), or by name when null. */
  public static synchronized void load(String libraryPath) {
    if (libraryPath == null) {
      load();
      return;
    }
    if (!loaded) {
      System.load(libraryPath);
      loaded = true;
    }
  }

  private long handle;
  private Stats lastStats;
  private final int maxDraft;
  private final int maxSeqLen;
  private final int vocabSize;

  /**
   * Opens a bundle folder written by {@code mtp-edge export}: checks its manifest and the
   * program's sha256, loads every method. Loads the JNI library by name if {@link #load} was not called.
   *
   * @throws MtpEdgeException with the native message when the bundle cannot be used
   */
  public MtpEdgeRunner(String bundleDir) throws MtpEdgeException {
    if (!loaded) {
      load();
    }
    handle = nativeOpen(bundleDir);
    maxDraft = (int) nativeInfo(handle, 0);
    maxSeqLen = (int) nativeInfo(handle, 1);
    vocabSize = (int) nativeInfo(handle, 2);
  }

  /** The bundle's largest K (0 when it has no drafter). */
  public int maxDraft() {
    return maxDraft;
  }

  /** Positions of the KV cache: prompt + new tokens must fit in it. */
  public int maxSeqLen() {
    return maxSeqLen;
  }

  public int vocabSize() {
    return vocabSize;
  }

  /**
   * Generates up to maxNewTokens after the prompt; k = 0 decodes with the target alone.
   *
   * <p>temperature 0 is greedy; topK 0 and topP 1 are off. The float arguments are passed to the
   * runner as the doubles their decimal text reads as (0.8f as 0.8), so that a seeded request
   * samples exactly as the Python runtime does for the same decimal values.
   *
   * @param listener receives each token as soon as it is accepted; may be null
   * @return the new tokens (the EOS token included when generation stopped on it)
   * @throws MtpEdgeException with the native message for a request the bundle cannot serve
   */
  public synchronized int[] generate(int[] prompt, int k, int maxNewTokens, float temperature, int topK, float topP,
      long seed, TokenListener listener) throws MtpEdgeException {
    long[] counts = new long[5];
    double[] times = new double[3];
    String[] stopReason = new String[1];
    int[] tokens = nativeGenerate(checkedHandle(), prompt, k, maxNewTokens, decimal(temperature), topK, decimal(topP),
        seed, listener, counts, times, stopReason);
    lastStats = new Stats(counts, times, stopReason[0]);
    return tokens;
  }

  /** Greedy generation. */
  public int[] generate(int[] prompt, int k, int maxNewTokens, TokenListener listener) throws MtpEdgeException {
    return generate(prompt, k, maxNewTokens, 0f, 0, 1f, 0L, listener);
  }

  /** The statistics of the last successful generate call (null before the first). */
  public synchronized Stats lastStats() {
    return lastStats;
  }

  /** Frees the native runner (and the program's memory); later calls throw. Idempotent. */
  @Override
  public synchronized void close() {
    if (handle != 0) {
      nativeClose(handle);
      handle = 0;
    }
  }

  private long checkedHandle() {
    if (handle == 0) {
      throw new MtpEdgeException("this MtpEdgeRunner is closed");
    }
    return handle;
  }

  private static double decimal(float value) {
    return Double.parseDouble(Float.toString(value));
  }

  private static native long nativeOpen(String bundleDir);

  private static native void nativeClose(long handle);

  private static native long nativeInfo(long handle, int which);

  private static native int[] nativeGenerate(long handle, int[] prompt, int k, int maxNewTokens, double temperature,
      int topK, double topP, long seed, TokenListener listener, long[] counts, double[] times, String[] stopReason);
}
