package com.mtpedge;

import java.nio.charset.StandardCharsets;

/**
 * The mtp-edge speculative runner (android_demo/native) from Java, through the JNI bridge
 * {@code libmtp_edge_jni} over the C API of {@code mtp_edge_runner.h}.
 *
 * <p>Uses no {@code android.*} API: the same class runs in the app and on a desktop JVM (the
 * bridge test, tests/test_android_bridge.py). A bundle, prompt, K and sampling seed give the
 * tokens the Python runtime gives. K is {@link #K_AUTO} unless set: a draft policy picks each
 * round's draft length from this device's call times and the acceptance so far (0 where drafting
 * does not pay); {@link #lastStats()} tells which lengths it drafted and the cost table it used.
 * Every native failure (a missing bundle, a modified program, an unknown manifest version, a
 * prompt the cache cannot hold, ...) is thrown as an {@link MtpEdgeException} carrying the
 * runner's one-line message.
 *
 * <p>Text: {@link #generateText} takes the prompt as text and streams the generated text, through the
 * bundle's {@code tokenizer.json} (the C++ {@code tokenizers::HFTokenizer} of ExecuTorch's LLM
 * runners, in the native library); {@link #encode} and {@link #decode} convert on their own. A
 * bundle without a tokenizer.json takes and gives token ids only (the text calls throw).
 *
 * <p>One instance serves one thread at a time (its methods are synchronized); generate on a
 * background thread in an app, and post streamed tokens to the UI thread yourself.
 */
public final class MtpEdgeRunner implements AutoCloseable {

  /** K = auto: a draft policy chooses each round's draft length (the default). */
  public static final int K_AUTO = -1;

  /** How speculative sampling stays exact (greedy ignores it). */
  public enum SamplingRule {
    /** Accept a draft with probability min(1, p/q): a seeded run's tokens depend on the draft lengths. */
    REJECTION,
    /** Gumbel-max coupling: a seeded run gives plain seeded sampling's tokens whatever the draft lengths. */
    COUPLED
  }

  /**
   * What one generate call does; every setting has a default: K auto (at most the bundle's K),
   * 64 new tokens, greedy, the rejection rule, no fixed drafting p-min, costs timed on the device.
   */
  public static final class Options {
    private int k = K_AUTO;
    private int maxK = -1;
    private int maxNewTokens = 64;
    private float temperature = 0f;
    private int topK = 0;
    private float topP = 1f;
    private long seed = 0L;
    private SamplingRule rule = SamplingRule.REJECTION;
    private double draftPMin = -1.0;
    private String costsJson = null;

    /** Draft tokens per round (0 = the target alone), or {@link #K_AUTO}. */
    public Options k(int k) {
      this.k = k;
      return this;
    }

    /** With K auto, the longest draft of a round (-1: the bundle's K). */
    public Options maxK(int maxK) {
      this.maxK = maxK;
      return this;
    }

    public Options maxNewTokens(int maxNewTokens) {
      this.maxNewTokens = maxNewTokens;
      return this;
    }

    /**
     * Sampling: temperature 0 is greedy; topK 0 and topP 1 are off. The floats reach the runner as
     * the doubles their decimal text reads as (0.8f as 0.8), as the Python runtime reads them.
     */
    public Options sampling(float temperature, int topK, float topP, long seed) {
      this.temperature = temperature;
      this.topK = topK;
      this.topP = topP;
      this.seed = seed;
      return this;
    }

    public Options rule(SamplingRule rule) {
      if (rule == null) {
        throw new IllegalArgumentException("rule must not be null");
      }
      this.rule = rule;
      return this;
    }

    /**
     * Stop a draft before a step whose top probability (the drafter's, over its candidates) is
     * below pMin; negative: none (with K auto the cost table then decides where a draft stops).
     */
    public Options draftPMin(double pMin) {
      this.draftPMin = pMin;
      return this;
    }

    /**
     * With K auto, decide from this cost table, frozen (timings never change it):
     * {@code {"decode": s, "draft_step": s, "verify": {"2": s, ...}}}, as Python's
     * CostTable.to_json() and {@code mtp-edge tune} write it. Null: time the calls on the device.
     */
    public Options costsJson(String costsJson) {
      this.costsJson = costsJson;
      return this;
    }
  }

  /** Seconds per call that the draft policy decided from (runtime/draft_policy.py's CostTable). */
  public static final class CostTable {
    /** One target call on 1 token (a plain round). */
    public final double decodeSeconds;
    /** One drafter step. */
    public final double draftStepSeconds;
    private final double[] verify; // verify[i]: one target call on i + 2 tokens

    CostTable(double[] values) {
      this.decodeSeconds = values[0];
      this.draftStepSeconds = values[1];
      this.verify = java.util.Arrays.copyOfRange(values, 2, values.length);
    }

    /** The largest draft length the table covers. */
    public int maxK() {
      return verify.length;
    }

    /** Seconds of one target call on {@code tokens} tokens (1 = decode, 2..maxK() + 1 = verify). */
    public double verifySeconds(int tokens) {
      return tokens == 1 ? decodeSeconds : verify[tokens - 2];
    }

    @Override
    public String toString() {
      StringBuilder b = new StringBuilder(String.format(java.util.Locale.ROOT, "decode %.2f ms, draft step %.2f ms, verify",
          1e3 * decodeSeconds, 1e3 * draftStepSeconds));
      for (int i = 0; i < verify.length; i++) {
        b.append(String.format(java.util.Locale.ROOT, "%s %d: %.2f ms", i == 0 ? "" : ",", i + 2, 1e3 * verify[i]));
      }
      return b.toString();
    }
  }

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

  /**
   * Receives the generated text as whole characters arrive (on the thread that called generateText).
   * A character that spans several tokens (an emoji, most CJK in a byte-level vocabulary) arrives
   * with its last token; the tokens before it bring "". token is the id that completed the text, or
   * -1 once at the end when a character was left unfinished (then text is U+FFFD).
   */
  public interface TextListener {
    void onText(String text, int token);
  }

  /** A text generation: the prompt's ids (BOS included), the new ids and their text. */
  public static final class TextGeneration {
    public final int[] promptTokens;
    public final int[] tokens;
    public final String text;

    TextGeneration(int[] promptTokens, int[] tokens, String text) {
      this.promptTokens = promptTokens;
      this.tokens = tokens;
      this.text = text;
    }
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
    /** Drafts cut short by the drafting p-min or the policy's cost rule. */
    public final long earlyStops;
    /** Rounds that drafted nothing (plain decoding). */
    public final long plainRounds;
    /** True when a draft policy chose K (K auto on a bundle with a drafter); the fields below are then set. */
    public final boolean autoK;
    /** Rounds the policy drafted although plain decoding looked faster, to keep measuring acceptance. */
    public final long probeRounds;
    /** True when timings did not change the cost table (a given table, or seeded rejection sampling). */
    public final boolean costsFrozen;
    /** Where the cost table came from: "given", "measured" or "default"; null without a policy. */
    public final String costSource;
    /** The cost table the policy ended with (null without a policy). */
    public final CostTable costs;
    private final long[] kHistogram;
    private final long[] plannedKHistogram;
    private final double[] acceptance;
    private final String json;

    Stats(long[] counts, double[] times, String[] texts, long[] kHistogram, long[] plannedKHistogram, double[] costs,
        double[] acceptance, String json) {
      this.promptTokens = counts[0];
      this.newTokens = counts[1];
      this.rounds = counts[2];
      this.drafted = counts[3];
      this.accepted = counts[4];
      this.earlyStops = counts[5];
      this.plainRounds = counts[6];
      this.probeRounds = counts[7];
      this.autoK = counts[8] != 0;
      this.costsFrozen = counts[9] != 0;
      this.prefillSeconds = times[0];
      this.decodeSeconds = times[1];
      this.decodeMethodsSeconds = times[2];
      this.stopReason = texts[0];
      this.costSource = autoK ? texts[1] : null;
      this.kHistogram = kHistogram;
      this.plannedKHistogram = plannedKHistogram;
      this.costs = autoK && costs.length >= 2 ? new CostTable(costs) : null;
      this.acceptance = acceptance;
      this.json = json;
    }

    /** Rounds per draft length: element d counts the rounds that drafted d tokens (0: plain rounds). */
    public long[] kHistogram() {
      return kHistogram.clone();
    }

    /** K auto: rounds per draft length the policy planned (probes included; a round can draft fewer). */
    public long[] plannedKHistogram() {
      return plannedKHistogram.clone();
    }

    /** K auto: the policy's final acceptance estimate, element i for draft position i + 1. */
    public double[] acceptance() {
      return acceptance.clone();
    }

    /** The histogram as text, e.g. "0:3 2:5 4:10" (draft length:rounds, lengths never drafted left out). */
    public String kHistogramText() {
      StringBuilder b = new StringBuilder();
      for (int d = 0; d < kHistogram.length; d++) {
        if (kHistogram[d] != 0) {
          b.append(b.length() > 0 ? " " : "").append(d).append(':').append(kHistogram[d]);
        }
      }
      return b.toString();
    }

    /** Every statistic as one JSON object, as the desktop runner (mtp_edge_runner) writes it. */
    public String toJson() {
      return json;
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
          "%d new tokens (%s), %d rounds, accepted %d/%d (%.1f%%), %.1f tok/s, K histogram %s",
          newTokens, stopReason, rounds, accepted, drafted, 100.0 * acceptanceRate(), tokensPerSecond(), kHistogramText());
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
   * Generates after the prompt as {@code options} says (null: every default: greedy, K auto).
   *
   * @param listener receives each token as soon as it is accepted; may be null
   * @return the new tokens (the EOS token included when generation stopped on it)
   * @throws MtpEdgeException with the native message for a request the bundle cannot serve
   */
  public synchronized int[] generate(int[] prompt, Options options, TokenListener listener) throws MtpEdgeException {
    Options o = options != null ? options : new Options();
    long handle = checkedHandle();
    long[] counts = new long[10];
    double[] times = new double[3];
    String[] texts = new String[2];
    int[] tokens = nativeGenerate(handle, prompt, o.k, o.maxNewTokens, decimal(o.temperature), o.topK, decimal(o.topP),
        o.seed, o.rule.ordinal(), o.maxK, o.draftPMin, o.costsJson, listener, counts, times, texts);
    lastStats = new Stats(counts, times, texts, nativeLastHistogram(handle, 0), nativeLastHistogram(handle, 1),
        nativeLastPolicy(handle, 0), nativeLastPolicy(handle, 1), nativeLastStatsJson(handle));
    return tokens;
  }

  /**
   * Generates up to maxNewTokens after the prompt; k = 0 decodes with the target alone, {@link #K_AUTO}
   * lets the draft policy choose. The rejection rule, no drafting p-min, costs timed on the device.
   *
   * <p>temperature 0 is greedy; topK 0 and topP 1 are off. The float arguments are passed to the
   * runner as the doubles their decimal text reads as (0.8f as 0.8), so that a seeded request
   * samples exactly as the Python runtime does for the same decimal values.
   *
   * @param listener receives each token as soon as it is accepted; may be null
   * @return the new tokens (the EOS token included when generation stopped on it)
   * @throws MtpEdgeException with the native message for a request the bundle cannot serve
   */
  public int[] generate(int[] prompt, int k, int maxNewTokens, float temperature, int topK, float topP,
      long seed, TokenListener listener) throws MtpEdgeException {
    return generate(prompt, new Options().k(k).maxNewTokens(maxNewTokens).sampling(temperature, topK, topP, seed), listener);
  }

  /** Greedy generation with a given K (0 = the target alone, {@link #K_AUTO}). */
  public int[] generate(int[] prompt, int k, int maxNewTokens, TokenListener listener) throws MtpEdgeException {
    return generate(prompt, new Options().k(k).maxNewTokens(maxNewTokens), listener);
  }

  /** Greedy generation, K auto. */
  public int[] generate(int[] prompt, int maxNewTokens, TokenListener listener) throws MtpEdgeException {
    return generate(prompt, new Options().maxNewTokens(maxNewTokens), listener);
  }

  /**
   * The ids of {@code text} as the bundle's tokenizer.json encodes it, with its special tokens (BOS):
   * what the Python runtime feeds the model for that prompt.
   *
   * @throws MtpEdgeException when the bundle has no tokenizer.json (or a modified or malformed one)
   */
  public synchronized int[] encode(String text) throws MtpEdgeException {
    return nativeEncode(checkedHandle(), utf8(text));
  }

  /**
   * The prompt ids of a chat through the bundle's chat template (its target checkpoint's, from
   * tokenizer_config.json or chat_template.jinja), as transformers'
   * {@code apply_chat_template(messages, add_generation_prompt=True)} gives them: the rendered text
   * encoded without the tokenizer's own special tokens (the template writes BOS). Pass them to
   * {@link #generate}.
   *
   * @param messagesJson a JSON array of messages, e.g. {@code [{"role": "user", "content": "Hi"}]}
   * @throws MtpEdgeException when the bundle has no chat template (or a modified one), or the template
   *     refuses the messages
   */
  public synchronized int[] encodeChat(String messagesJson) throws MtpEdgeException {
    return (int[]) nativeChat(checkedHandle(), utf8(messagesJson), 0);
  }

  /** The text {@link #encodeChat} encodes: the chat rendered with the bundle's chat template. */
  public synchronized String chatText(String messagesJson) throws MtpEdgeException {
    return new String((byte[]) nativeChat(checkedHandle(), utf8(messagesJson), 1), StandardCharsets.UTF_8);
  }

  /** {@code text} as one user turn, for {@link #encodeChat}: {@code [{"role": "user", "content": text}]}. */
  public static String userTurn(String text) {
    StringBuilder out = new StringBuilder("[{\"role\": \"user\", \"content\": \"");
    for (int i = 0; i < text.length(); i++) {
      char c = text.charAt(i);
      if (c == '"' || c == '\\') {
        out.append('\\').append(c);
      } else if (c < 0x20) {
        out.append(String.format("\\u%04x", (int) c));
      } else {
        out.append(c);
      }
    }
    return out.append("\"}]").toString();
  }

  /**
   * The text of token ids (special tokens as their text; invalid UTF-8 as U+FFFD), as the Python
   * {@code tokenizers} library decodes them.
   *
   * @throws MtpEdgeException when the bundle has no tokenizer.json or an id is outside its vocabulary
   */
  public synchronized String decode(int[] tokens) throws MtpEdgeException {
    return new String(nativeDecode(checkedHandle(), tokens), StandardCharsets.UTF_8);
  }

  /**
   * Generates after a text prompt as {@code options} says (null: greedy, K auto): the prompt is encoded
   * as {@link #encode} does, the new tokens' text streamed to {@code listener} as whole characters
   * arrive. {@link #lastStats()} describes it as for {@link #generate}.
   *
   * @param listener receives the text as it is generated; may be null
   * @throws MtpEdgeException when the bundle has no tokenizer.json, or for a request it cannot serve
   */
  public synchronized TextGeneration generateText(String prompt, Options options, TextListener listener)
      throws MtpEdgeException {
    return generateStreamed(utf8(prompt), false, options, listener);
  }

  /**
   * {@link #generateText} for a chat: the prompt is the chat through the bundle's chat template, as
   * {@link #encodeChat} gives it (e.g. {@code generateChat(userTurn(text), options, listener)}).
   *
   * @param messagesJson a JSON array of messages, e.g. {@code [{"role": "user", "content": "Hi"}]}
   * @throws MtpEdgeException when the bundle has no chat template or tokenizer.json, the template
   *     refuses the messages, or for a request it cannot serve
   */
  public synchronized TextGeneration generateChat(String messagesJson, Options options, TextListener listener)
      throws MtpEdgeException {
    return generateStreamed(utf8(messagesJson), true, options, listener);
  }

  /** Whether the bundle carries a chat template, for {@link #generateChat} (its target checkpoint's). */
  public synchronized boolean hasChatTemplate() {
    return nativeHasChatTemplate(checkedHandle());
  }

  private TextGeneration generateStreamed(byte[] prompt, boolean chat, Options options, TextListener listener) {
    Options o = options != null ? options : new Options();
    long handle = checkedHandle();
    long[] counts = new long[10];
    double[] times = new double[3];
    String[] texts = new String[2];
    int[] promptTokens = chat ? (int[]) nativeChat(handle, prompt, 0) : nativeEncode(handle, prompt);
    int[] tokens = nativeGenerateText(handle, prompt, o.k, o.maxNewTokens, decimal(o.temperature), o.topK,
        decimal(o.topP), o.seed, o.rule.ordinal(), o.maxK, o.draftPMin, o.costsJson,
        listener != null ? new TextSink(listener) : null, counts, times, texts, chat);
    lastStats = new Stats(counts, times, texts, nativeLastHistogram(handle, 0), nativeLastHistogram(handle, 1),
        nativeLastPolicy(handle, 0), nativeLastPolicy(handle, 1), nativeLastStatsJson(handle));
    return new TextGeneration(promptTokens, tokens, new String(nativeLastText(handle), StandardCharsets.UTF_8));
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

  // Text crosses JNI as UTF-8 bytes: JNI's own string conversions use modified UTF-8, which writes
  // a character outside the BMP (an emoji) differently from the UTF-8 the tokenizer reads.
  private static byte[] utf8(String text) {
    if (text == null) {
      throw new MtpEdgeException("text must not be null");
    }
    return text.getBytes(StandardCharsets.UTF_8);
  }

  /** Called by the native library with each piece of generated text (UTF-8). */
  private static final class TextSink {
    private final TextListener listener;

    TextSink(TextListener listener) {
      this.listener = listener;
    }

    @SuppressWarnings("unused")
    void piece(int token, byte[] utf8) {
      listener.onText(new String(utf8, StandardCharsets.UTF_8), token);
    }
  }

  private static double decimal(float value) {
    return Double.parseDouble(Float.toString(value));
  }

  private static native long nativeOpen(String bundleDir);

  private static native void nativeClose(long handle);

  private static native long nativeInfo(long handle, int which);

  private static native int[] nativeGenerate(long handle, int[] prompt, int k, int maxNewTokens, double temperature,
      int topK, double topP, long seed, int rule, int maxK, double draftPMin, String costsJson, TokenListener listener,
      long[] counts, double[] times, String[] texts);

  private static native int[] nativeGenerateText(long handle, byte[] prompt, int k, int maxNewTokens,
      double temperature, int topK, double topP, long seed, int rule, int maxK, double draftPMin, String costsJson,
      Object sink, long[] counts, double[] times, String[] texts, boolean chat);

  private static native boolean nativeHasChatTemplate(long handle);

  private static native byte[] nativeLastText(long handle);

  private static native int[] nativeEncode(long handle, byte[] utf8);

  private static native byte[] nativeDecode(long handle, int[] tokens);

  private static native Object nativeChat(long handle, byte[] messagesJson, int which);

  private static native long[] nativeLastHistogram(long handle, int which);

  private static native double[] nativeLastPolicy(long handle, int which);

  private static native String nativeLastStatsJson(long handle);
}
