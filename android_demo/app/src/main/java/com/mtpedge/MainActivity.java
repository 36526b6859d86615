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
 * between speculative decoding (the bundle's K) and the target alone (K = 0).
 *
 * <p>Prompts are token ids typed as text and the output is shown as ids: the app has no tokenizer
 * yet (the bundle's tokenizer.json needs a BPE implementation; see android_demo/README.md).
 * Generation is greedy, so switching K must not change the tokens, only the speed.
 */
public class MainActivity extends Activity {
  private static final String DEFAULT_BUNDLE = "/data/local/tmp/mtp-edge/bundle";

  private final ExecutorService worker = Executors.newSingleThreadExecutor();
  private MtpEdgeRunner runner; // used on the worker thread only
  private String runnerDir;

  private EditText bundleDir;
  private EditText prompt;
  private EditText maxNewTokens;
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
    final int[] ids;
    final int maxNew;
    try {
      ids = parseIds(prompt.getText().toString());
      maxNew = Integer.parseInt(maxNewTokens.getText().toString().trim());
    } catch (NumberFormatException e) {
      stats.setText("the prompt must be token ids separated by spaces, and new tokens a number");
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
        int k = useDrafter ? runner.maxDraft() : 0;
        runner.generate(ids, k, maxNew, token -> runOnUiThread(() -> output.append(token + " ")));
        MtpEdgeRunner.Stats s = runner.lastStats();
        String line = String.format(Locale.ROOT, "K=%d: %.1f tok/s, acceptance %s, %.2f tokens per target call, %d tokens (%s)",
            k, s.tokensPerSecond(), k > 0 ? String.format(Locale.ROOT, "%.1f%%", 100 * s.acceptanceRate()) : "-",
            s.tokensPerTargetCall(), s.newTokens, s.stopReason);
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
