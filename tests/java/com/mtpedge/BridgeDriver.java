package com.mtpedge;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Base64;
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
 *   set [rule=R] [max_k=N] [p_min=P] [costs=JSON]      -&gt; {"op":"set"}: options of the later gen commands
 *   gen K MAX_NEW TEMPERATURE TOP_K TOP_P SEED TOKEN...  -&gt; {"op":"gen","tokens":[..],"streamed":[..],"stats":{..}}
 *   throw_after N K MAX_NEW TOKEN...                   (greedy; the listener throws at its Nth token)
 *   text K MAX_NEW BASE64                              -&gt; {"op":"text","prompt_tokens":[..],"tokens":[..],"text":"..",
 *                                                          "pieces":[".."],"piece_tokens":[..],"stats":{..}}
 *   encode BASE64                                      -&gt; {"op":"encode","ids":[..]}
 *   decode TOKEN...                                    -&gt; {"op":"decode","text":".."}
 *   close                                              -&gt; {"op":"close"}
 * </pre>
 * K is a number or "auto". set: rule rejection | coupled, max_k -1 = the bundle's, p_min &lt; 0 = none,
 * costs a cost table as compact JSON (no spaces) or "null"; "set" alone restores the defaults.
 * Text goes in as the base64 of its UTF-8 bytes (one word on the line) and comes out as JSON strings
 * with every non-ASCII character escaped (JSON backslash-u escapes), whatever the JVM's default charset.
 * A failing command answers {"op":..,"exception":"CLASS","message":".."} and the driver goes on.
 */
public final class BridgeDriver {
  private BridgeDriver() {}

  public static void main(String[] args) throws Exception {
    MtpEdgeRunner.load(args.length > 0 ? args[0] : null);
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    MtpEdgeRunner runner = null;
    MtpEdgeRunner.SamplingRule rule = MtpEdgeRunner.SamplingRule.REJECTION;
    int maxK = -1;
    double pMin = -1.0;
    String costs = null;
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
          case "set": {
            rule = MtpEdgeRunner.SamplingRule.REJECTION;
            maxK = -1;
            pMin = -1.0;
            costs = null;
            for (int i = 1; i < f.length; i++) {
              String key = f[i].substring(0, f[i].indexOf('='));
              String value = f[i].substring(f[i].indexOf('=') + 1);
              switch (key) {
                case "rule":
                  rule = MtpEdgeRunner.SamplingRule.valueOf(value.toUpperCase(Locale.ROOT));
                  break;
                case "max_k":
                  maxK = Integer.parseInt(value);
                  break;
                case "p_min":
                  pMin = Double.parseDouble(value);
                  break;
                case "costs":
                  costs = value.equals("null") ? null : value;
                  break;
                default:
                  throw new IllegalArgumentException("unknown option " + key);
              }
            }
            emit("{\"op\":\"set\"}");
            break;
          }
          case "gen": {
            final List<Integer> streamed = new ArrayList<>();
            int k = f[1].equals("auto") ? MtpEdgeRunner.K_AUTO : Integer.parseInt(f[1]);
            MtpEdgeRunner.Options options = new MtpEdgeRunner.Options().k(k).maxNewTokens(Integer.parseInt(f[2]))
                .sampling(Float.parseFloat(f[3]), Integer.parseInt(f[4]), Float.parseFloat(f[5]), Long.parseLong(f[6]))
                .rule(rule).maxK(maxK).draftPMin(pMin).costsJson(costs);
            int[] tokens = runner.generate(ints(f, 7), options, streamed::add);
            emit("{\"op\":\"gen\",\"tokens\":" + json(tokens) + ",\"streamed\":" + json(streamed) + ",\"stats\":"
                + json(runner.lastStats()) + "}");
            break;
          }
          case "throw_after": {
            final int n = Integer.parseInt(f[1]);
            final int[] seen = {0};
            int k = f[2].equals("auto") ? MtpEdgeRunner.K_AUTO : Integer.parseInt(f[2]);
            runner.generate(ints(f, 4), k, Integer.parseInt(f[3]), token -> {
              if (++seen[0] == n) {
                throw new IllegalStateException("listener stopped at token " + n);
              }
            });
            emit("{\"op\":\"throw_after\",\"seen\":" + seen[0] + "}");
            break;
          }
          case "text":
          case "chatgen": {
            final List<String> pieces = new ArrayList<>();
            final List<Integer> pieceTokens = new ArrayList<>();
            int k = f[1].equals("auto") ? MtpEdgeRunner.K_AUTO : Integer.parseInt(f[1]);
            MtpEdgeRunner.Options options = new MtpEdgeRunner.Options().k(k).maxNewTokens(Integer.parseInt(f[2]));
            MtpEdgeRunner.TextListener listener = (piece, token) -> {
              pieces.add(piece);
              pieceTokens.add(token);
            };
            MtpEdgeRunner.TextGeneration g = op.equals("text")
                ? runner.generateText(text(f[3]), options, listener)
                : runner.generateChat(text(f[3]), options, listener);
            StringBuilder p = new StringBuilder("[");
            for (int i = 0; i < pieces.size(); i++) {
              p.append(i > 0 ? "," : "").append(str(pieces.get(i)));
            }
            emit("{\"op\":" + str(op) + ",\"prompt_tokens\":" + json(g.promptTokens) + ",\"tokens\":" + json(g.tokens)
                + ",\"text\":" + str(g.text) + ",\"pieces\":" + p.append(']') + ",\"piece_tokens\":" + json(pieceTokens)
                + ",\"stats\":" + json(runner.lastStats()) + "}");
            break;
          }
          case "encode": {
            emit("{\"op\":\"encode\",\"ids\":" + json(runner.encode(text(f.length > 1 ? f[1] : ""))) + "}");
            break;
          }
          case "chat": {
            String messages = text(f[1]);
            int[] ids = runner.encodeChat(messages);
            emit("{\"op\":\"chat\",\"ids\":" + json(ids) + ",\"text\":" + str(runner.chatText(messages)) + "}");
            break;
          }
          case "has_chat": {
            emit("{\"op\":\"has_chat\",\"value\":" + runner.hasChatTemplate() + "}");
            break;
          }
          case "user_turn": {
            emit("{\"op\":\"user_turn\",\"json\":" + str(MtpEdgeRunner.userTurn(text(f[1]))) + "}");
            break;
          }
          case "decode": {
            emit("{\"op\":\"decode\",\"text\":" + str(runner.decode(ints(f, 1))) + "}");
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

  private static String text(String base64) {
    return new String(Base64.getDecoder().decode(base64), StandardCharsets.UTF_8);
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
    MtpEdgeRunner.CostTable c = s.costs;
    String costs = "null";
    if (c != null) {
      double[] verify = new double[c.maxK()];
      for (int i = 0; i < verify.length; i++) {
        verify[i] = c.verifySeconds(i + 2);
      }
      costs = "{\"decode\":" + Double.toString(c.decodeSeconds) + ",\"draft_step\":" + Double.toString(c.draftStepSeconds)
          + ",\"verify\":" + json(verify) + "}";
    }
    return String.format(Locale.ROOT,
        "{\"prompt_tokens\":%d,\"new_tokens\":%d,\"rounds\":%d,\"drafted\":%d,\"accepted\":%d,\"prefill_s\":%s,"
            + "\"decode_s\":%s,\"decode_methods_s\":%s,\"stop_reason\":%s,\"acceptance_rate\":%s,\"tokens_per_s\":%s,"
            + "\"early_stops\":%d,\"plain_rounds\":%d,\"k_histogram\":%s,\"k_histogram_text\":%s,\"auto_k\":%s,"
            + "\"planned_k_histogram\":%s,\"probe_rounds\":%d,\"costs_frozen\":%s,\"cost_source\":%s,\"costs\":%s,"
            + "\"acceptance\":%s,\"native\":%s}",
        s.promptTokens, s.newTokens, s.rounds, s.drafted, s.accepted, Double.toString(s.prefillSeconds),
        Double.toString(s.decodeSeconds), Double.toString(s.decodeMethodsSeconds), str(s.stopReason),
        Double.toString(s.acceptanceRate()), Double.toString(s.tokensPerSecond()), s.earlyStops, s.plainRounds,
        json(s.kHistogram()), str(s.kHistogramText()), Boolean.toString(s.autoK), json(s.plannedKHistogram()),
        s.probeRounds, Boolean.toString(s.costsFrozen), s.costSource == null ? "null" : str(s.costSource), costs,
        json(s.acceptance()), s.toJson());
  }

  private static String json(long[] values) {
    StringBuilder b = new StringBuilder("[");
    for (int i = 0; i < values.length; i++) {
      b.append(i > 0 ? "," : "").append(values[i]);
    }
    return b.append(']').toString();
  }

  private static String json(double[] values) {
    StringBuilder b = new StringBuilder("[");
    for (int i = 0; i < values.length; i++) {
      b.append(i > 0 ? "," : "").append(Double.toString(values[i]));
    }
    return b.append(']').toString();
  }

  private static String str(String s) {
    StringBuilder b = new StringBuilder("\"");
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      if (c == '"' || c == '\\') {
        b.append('\\').append(c);
      } else if (c < 0x20 || c >= 0x7f) {
        b.append(String.format(Locale.ROOT, "\\u%04x", (int) c));
      } else {
        b.append(c);
      }
    }
    return b.append('"').toString();
  }
}
