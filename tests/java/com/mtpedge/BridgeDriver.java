package com.mtpedge;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

/**
 * Test driver for com.mtpedge.MtpEdgeRunner on a desktop JVM (tests/test_android_bridge.py).
 *
 * <pre>java -Djava.library.path=DIR -cp CLASSES com.mtpedge.BridgeDriver [LIBRARY_PATH] &lt; commands</pre>
 *
 * One command a line, one JSON line out for each:
 * <pre>
 *   open BUNDLE_DIR                                    -&gt; {"op":"open","max_draft":..,"max_seq_len":..,"vocab_size":..}
 *   gen K MAX_NEW TEMPERATURE TOP_K TOP_P SEED TOKEN...  -&gt; {"op":"gen","tokens":[..],"streamed":[..],"stats":{..}}
 *   throw_after N K MAX_NEW TOKEN...                   (greedy; the listener throws at its Nth token)
 *   close                                              -&gt; {"op":"close"}
 * </pre>
 * A failing command answers {"op":..,"exception":"CLASS","message":".."} and the driver goes on.
 */
public final class BridgeDriver {
  private BridgeDriver() {}

  public static void main(String[] args) throws Exception {
    MtpEdgeRunner.load(args.length > 0 ? args[0] : null);
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    MtpEdgeRunner runner = null;
    String line;
    while ((line = in.readLine()) != null) {
      line = line.trim();
      if (line.isEmpty()) {
        continue;
      }
      String[] f = line.split("\\s+");
      String op = f[0];
      try {
        switch (op) {
          case "open": {
            if (runner != null) {
              runner.close();
            }
            runner = null;
            runner = new MtpEdgeRunner(line.substring(line.indexOf(' ') + 1));
            emit(String.format(Locale.ROOT, "{\"op\":\"open\",\"max_draft\":%d,\"max_seq_len\":%d,\"vocab_size\":%d}",
                runner.maxDraft(), runner.maxSeqLen(), runner.vocabSize()));
            break;
          }
          case "gen": {
            final List<Integer> streamed = new ArrayList<>();
            int[] tokens = runner.generate(ints(f, 7), Integer.parseInt(f[1]), Integer.parseInt(f[2]),
                Float.parseFloat(f[3]), Integer.parseInt(f[4]), Float.parseFloat(f[5]), Long.parseLong(f[6]),
                streamed::add);
            emit("{\"op\":\"gen\",\"tokens\":" + json(tokens) + ",\"streamed\":" + json(streamed) + ",\"stats\":"
                + json(runner.lastStats()) + "}");
            break;
          }
          case "throw_after": {
            final int n = Integer.parseInt(f[1]);
            final int[] seen = {0};
            runner.generate(ints(f, 4), Integer.parseInt(f[2]), Integer.parseInt(f[3]), token -> {
              if (++seen[0] == n) {
                throw new IllegalStateException("listener stopped at token " + n);
              }
            });
            emit("{\"op\":\"throw_after\",\"seen\":" + seen[0] + "}");
            break;
          }
          case "close": {
            runner.close();
            emit("{\"op\":\"close\"}");
            break;
          }
          default:
            throw new IllegalArgumentException("unknown command " + op);
        }
      } catch (RuntimeException e) {
        emit("{\"op\":" + str(op) + ",\"exception\":" + str(e.getClass().getName()) + ",\"message\":"
            + str(String.valueOf(e.getMessage())) + "}");
      }
    }
    if (runner != null) {
      runner.close();
    }
  }

  private static void emit(String json) {
    System.out.println(json);
    System.out.flush();
  }

  private static int[] ints(String[] f, int from) {
    int[] out = new int[f.length - from];
    for (int i = from; i < f.length; i++) {
      out[i - from] = Integer.parseInt(f[i]);
    }
    return out;
  }

  private static String json(int[] values) {
    StringBuilder b = new StringBuilder("[");
    for (int i = 0; i < values.length; i++) {
      b.append(i > 0 ? "," : "").append(values[i]);
    }
    return b.append(']').toString();
  }

  private static String json(List<Integer> values) {
    int[] a = new int[values.size()];
    for (int i = 0; i < a.length; i++) {
      a[i] = values.get(i);
    }
    return json(a);
  }

  private static String json(MtpEdgeRunner.Stats s) {
    return String.format(Locale.ROOT,
        "{\"prompt_tokens\":%d,\"new_tokens\":%d,\"rounds\":%d,\"drafted\":%d,\"accepted\":%d,\"prefill_s\":%s,"
            + "\"decode_s\":%s,\"decode_methods_s\":%s,\"stop_reason\":%s,\"acceptance_rate\":%s,\"tokens_per_s\":%s}",
        s.promptTokens, s.newTokens, s.rounds, s.drafted, s.accepted, Double.toString(s.prefillSeconds),
        Double.toString(s.decodeSeconds), Double.toString(s.decodeMethodsSeconds), str(s.stopReason),
        Double.toString(s.acceptanceRate()), Double.toString(s.tokensPerSecond()));
  }

  private static String str(String s) {
    StringBuilder b = new StringBuilder("\"");
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      if (c == '"' || c == '\\') {
        b.append('\\').append(c);
      } else if (c < 0x20) {
        b.append(String.format(Locale.ROOT, "\\u%04x", (int) c));
      } else {
        b.append(c);
      }
    }
    return b.append('"').toString();
  }
}
