package com.mtpedge;

import android.app.Activity;
import android.os.Bundle;
import android.widget.Button;
import android.widget.EditText;
import android.widget.Switch;
import android.widget.TextView;
import java.util.Locale;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

/**
 * The demo: a bundle folder, a prompt, streamed output, tokens/s and acceptance rate, and a switch
 * between speculative decoding with K auto (a draft policy picks each round's draft length, at most
 * the max K typed, from this device's own call times) and the target alone (K = 0). After a run it
 * shows which draft lengths the rounds used (the K histogram), the plain rounds, and the cost table
 * the policy decided from.
 *
 * <p>The prompt is text, encoded with the bundle's tokenizer.json, and the output streams as text
 * (whole characters, through the native HFTokenizer). Where the bundle carries a chat template (its
 * checkpoint's), the prompt is sent as the user's turn through it, as transformers'
 * apply_chat_template would render it. A prompt of numbers only (token ids separated
 * by spaces or commas) is taken as ids and the output shown as ids, for a bundle without a
 * tokenizer.json. Generation is greedy, so switching K must not change the tokens, only the speed.
 */
public class MainActivity extends Activity {
  private static final String DEFAULT_BUNDLE = "/data/local/tmp/mtp-edge/bundle";

  private final ExecutorService worker = Executors.newSingleThreadExecutor();
  private MtpEdgeRunner runner; // used on the worker thread only
  private String runnerDir;

  private EditText bundleDir;
  private EditText prompt;
  private EditText maxNewTokens;
  private EditText maxK;
  private Switch speculative;
  private Button generate;
  private TextView stats;
  private TextView output;

  @Override
  protected void onCreate(Bundle savedInstanceState) {
    super.onCreate(savedInstanceState);
    setContentView(R.layout.activity_main);
    bundleDir = findViewById(R.id.bundle_dir);
    prompt = findViewById(R.id.prompt);
    maxNewTokens = findViewById(R.id.max_new_tokens);
    maxK = findViewById(R.id.max_k);
    speculative = findViewById(R.id.speculative);
    generate = findViewById(R.id.generate);
    stats = findViewById(R.id.stats);
    output = findViewById(R.id.output);
    java.io.File inApp = new java.io.File(getFilesDir(), "bundle");
    bundleDir.setText(inApp.isDirectory() ? inApp.getPath() : DEFAULT_BUNDLE);
    generate.setOnClickListener(v -> startGeneration());
  }

  private void startGeneration() {
    final String dir = bundleDir.getText().toString().trim();
    final boolean useDrafter = speculative.isChecked();
    final String text = prompt.getText().toString();
    final int[] ids;
    final int maxNew;
    final int kBound;
    try {
      ids = text.trim().matches("[0-9][0-9\\s,]*") ? parseIds(text) : null; // null: a text prompt
      maxNew = Integer.parseInt(maxNewTokens.getText().toString().trim());
      String bound = maxK.getText().toString().trim();
      kBound = bound.isEmpty() ? -1 : Integer.parseInt(bound); // -1: the bundle's K
    } catch (NumberFormatException e) {
      stats.setText("new tokens must be a number, max K a number or empty");
      return;
    }
    if (text.trim().isEmpty()) {
      stats.setText("type a prompt (text, or token ids separated by spaces)");
      return;
    }
    generate.setEnabled(false);
    output.setText("");
    stats.setText(runner == null || !dir.equals(runnerDir) ? "loading the bundle..." : "generating...");
    worker.execute(() -> {
      try {
        if (runner == null || !dir.equals(runnerDir)) {
          if (runner != null) {
            runner.close();
            runner = null;
          }
          runner = new MtpEdgeRunner(dir); // checks the manifest and the program's sha256
          runnerDir = dir;
          runOnUiThread(() -> stats.setText("generating..."));
        }
        MtpEdgeRunner.Options options = new MtpEdgeRunner.Options()
            .k(useDrafter ? MtpEdgeRunner.K_AUTO : 0).maxK(kBound).maxNewTokens(maxNew);
        if (ids != null) {
          runner.generate(ids, options, token -> runOnUiThread(() -> output.append(token + " ")));
        } else {
          MtpEdgeRunner.TextListener show = (piece, token) -> {
            if (!piece.isEmpty()) {
              runOnUiThread(() -> output.append(piece));
            }
          };
          if (runner.hasChatTemplate()) { // an instruction-tuned checkpoint: the prompt is the user's turn
            runner.generateChat(MtpEdgeRunner.userTurn(text), options, show);
          } else {
            runner.generateText(text, options, show);
          }
        }
        final String line = describe(runner.lastStats(), useDrafter);
        runOnUiThread(() -> stats.setText(line));
      } catch (RuntimeException e) { // MtpEdgeException: the runner's own message (bad bundle, prompt too long, ...)
        runOnUiThread(() -> stats.setText("error: " + e.getMessage()));
      } catch (UnsatisfiedLinkError e) {
        runOnUiThread(() -> stats.setText("error: the native library did not load: " + e.getMessage()));
      } finally {
        runOnUiThread(() -> generate.setEnabled(true));
      }
    });
  }

  /** Speed and acceptance; with K auto the draft lengths the rounds used and the cost table behind them. */
  private static String describe(MtpEdgeRunner.Stats s, boolean auto) {
    StringBuilder b = new StringBuilder(String.format(Locale.ROOT,
        "K=%s: %.1f tok/s, acceptance %s, %.2f tokens per target call, %d tokens (%s)", auto ? "auto" : "0",
        s.tokensPerSecond(), s.drafted > 0 ? String.format(Locale.ROOT, "%.1f%%", 100 * s.acceptanceRate()) : "-",
        s.tokensPerTargetCall(), s.newTokens, s.stopReason));
    if (s.autoK) {
      b.append(String.format(Locale.ROOT, "%nK histogram (draft length:rounds) %s; plain rounds %d, probes %d, early stops %d",
          s.kHistogramText(), s.plainRounds, s.probeRounds, s.earlyStops));
      if (s.costs != null) {
        b.append(String.format(Locale.ROOT, "%ncosts (%s%s): %s", s.costSource, s.costsFrozen ? ", frozen" : "", s.costs));
      }
    }
    return b.toString();
  }

  private static int[] parseIds(String text) {
    String trimmed = text.trim();
    if (trimmed.isEmpty()) {
      throw new NumberFormatException("empty prompt");
    }
    String[] parts = trimmed.split("[\\s,]+");
    int[] ids = new int[parts.length];
    for (int i = 0; i < parts.length; i++) {
      ids[i] = Integer.parseInt(parts[i]);
    }
    return ids;
  }

  @Override
  protected void onDestroy() {
    worker.execute(() -> {
      if (runner != null) {
        runner.close();
        runner = null;
      }
    });
    worker.shutdown();
    super.onDestroy();
  }
}
