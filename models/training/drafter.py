"""Train (or adapt) a Gemma 4 MTP drafter for any target the loader reads.

Training follows inference exactly: each query is a draft round starting at position p. Step 0
takes the target's embedding of the token at p and the target's hidden state at p - 1; later
steps feed back the drafter's own projected hidden. The position stays p, attention reads the
target's store-layer K/V of positions < p, and every step's full-vocabulary distribution is
distilled towards the target's next-token distribution. The clustered head's centroids learn to
rank clusters by the target's probability mass in each.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .clusters import balanced_kmeans
from ..config import FULL, SLIDING, DecoderConfig, DrafterConfig, hf_config_to_drafter
from ..drafter import Gemma4Drafter
from ..errors import MtpEdgeError
from ..target import Gemma4Target
from .common import Checkpoint, TokenStream, adamw, cosine_lr, init_weights


def drafter_config_for(
    target: DecoderConfig,
    *,
    layers: int = 1,
    hidden: int = 128,
    intermediate: int = 512,
    heads: int = 2,
    num_centroids: int = 64,
    top_k: int = 8,
) -> DrafterConfig:
    """A drafter geometry that fits the target: its attention reads the target's store-layer K/V shapes."""
    from transformers import Gemma4AssistantConfig, Gemma4TextConfig

    if target.vocab_size % num_centroids:
        raise MtpEdgeError(f"--centroids {num_centroids} must divide the vocabulary size {target.vocab_size}.")
    stores = target.store_layers
    # Gemma 4 ends every decoder on a full layer; earlier layers alternate through the sliding store.
    types = [SLIDING] * (layers - 1) + [FULL] if SLIDING in stores else [FULL] * layers
    s, f = stores.get(SLIDING, stores[FULL]), stores[FULL]
    text = Gemma4TextConfig(
        vocab_size=target.vocab_size, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=target.num_kv_heads[s], head_dim=target.head_dims[s],
        global_head_dim=target.head_dims[f], num_global_key_value_heads=target.num_kv_heads[f],
        attention_k_eq_v=target.attention_k_eq_v, layer_types=types, sliding_window=target.sliding_window,
        hidden_size_per_layer_input=0, vocab_size_per_layer_input=0, num_kv_shared_layers=layers,
        rms_norm_eps=target.rms_norm_eps, hidden_activation=target.hidden_activation,
    )
    return hf_config_to_drafter(Gemma4AssistantConfig(
        text_config=text, backbone_hidden_size=target.hidden_size, use_ordered_embeddings=True,
        num_centroids=num_centroids, centroid_intermediate_top_k=top_k,
    ))


@torch.no_grad()
def init_drafter(cfg: DrafterConfig, target: Gemma4Target, seed: int = 0) -> Gemma4Drafter:
    """Fresh drafter: LM-head rows from the target's embeddings (principal directions), clustered."""
    torch.manual_seed(seed)
    drafter = Gemma4Drafter(cfg)
    init_weights(drafter)
    emb = target.embed_tokens.weight.float()
    emb = emb - emb.mean(0)
    _, _, v = torch.svd_lowrank(emb, q=cfg.decoder.hidden_size, niter=4)
    rows = emb @ v[:, : cfg.decoder.hidden_size]
    drafter.embed_tokens.weight.copy_(rows / rows.std() * 0.02)
    cluster(drafter, seed)
    return drafter


@torch.no_grad()
def cluster(drafter: Gemma4Drafter, seed: int = 0) -> None:
    """Balanced k-means of the LM-head rows gives token_ordering and the initial centroid weights."""
    head = drafter.masked_embedding
    ordering, centroids = balanced_kmeans(drafter.lm_head_weight.float(), head.num_centroids, seed=seed)
    head.token_ordering.copy_(ordering)
    head.centroids.weight.copy_(centroids)


def distill_step(target: Gemma4Target, drafter: Gemma4Drafter, batch: torch.Tensor, unroll: int) -> dict:
    """Losses for one batch [B, T]: every position p in 1..T-unroll starts a draft round of `unroll` steps.

    target: built with (or viewed through, with_cache("none")) NoCache: one pass over the whole batch."""
    with torch.no_grad():
        t_hidden, kv = target.run(batch, 0)
        t_logits, store = target.logits(t_hidden), target.store_kv(kv)
        t_probs = torch.softmax(t_logits.float(), -1)
        t_emb = target.embed(batch)
    length = batch.shape[1]
    starts = torch.arange(1, length - unroll + 1)
    hidden = t_hidden[:, starts - 1]
    cluster_members = drafter.masked_embedding.token_ordering.view(drafter.cfg.num_centroids, -1)
    kl, centroid_ce, agree = 0.0, 0.0, 0.0
    for j in range(unroll):
        h, hidden = drafter(t_emb[:, starts + j], hidden, starts, starts, store)
        log_q = F.log_softmax(drafter.full_logits(h).float(), -1)
        p = t_probs[:, starts + j]
        kl = kl + (p * (torch.log(p.clamp_min(1e-12)) - log_q)).sum(-1).mean()
        p_cluster = p[..., cluster_members].sum(-1)  # target mass per cluster
        centroid_ce = centroid_ce - (p_cluster * F.log_softmax(drafter.masked_embedding.centroids(h).float(), -1)).sum(-1).mean()
        agree = agree + (log_q.argmax(-1) == p.argmax(-1)).float().mean()
    return {"kl": kl / unroll, "centroid_ce": centroid_ce / unroll, "greedy_agreement": agree / unroll}


def train_drafter(
    target: Gemma4Target,
    drafter: Gemma4Drafter,
    stream: TokenStream,
    *,
    steps: int,
    batch_size: int = 16,
    length: int = 256,
    unroll: int = 4,
    lr: float = 2e-3,
    warmup: int = 30,
    seed: int = 0,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int = 100,
    stop_after: int | None = None,
) -> tuple[Gemma4Drafter, int]:
    """Returns (drafter, steps done); with stop_after, trains at most that many steps in this run."""
    target.eval().requires_grad_(False)
    teacher = target.with_cache("none")
    drafter.train()
    optimizer = adamw(drafter, lr)
    generator = torch.Generator().manual_seed(seed)
    start = checkpoint.load(drafter, optimizer, generator)[0] if checkpoint else 0
    end = steps if stop_after is None else min(steps, start + stop_after)
    bar = tqdm(range(start, end), desc="train drafter", initial=start, total=steps, unit="step")
    started = time.perf_counter()
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup)
        batch = stream.batch(generator, batch_size, length)[:, :-1]
        losses = distill_step(teacher, drafter, batch, unroll)
        optimizer.zero_grad(set_to_none=True)
        (losses["kl"] + losses["centroid_ce"]).backward()
        torch.nn.utils.clip_grad_norm_(drafter.parameters(), 1.0)
        optimizer.step()
        bar.set_postfix(kl=f"{losses['kl'].item():.3f}", agree=f"{losses['greedy_agreement'].item():.2f}",
                        s_step=f"{(time.perf_counter() - started) / (step - start + 1):.2f}")
        if checkpoint and ((step + 1) % checkpoint_every == 0 or step + 1 == end):
            checkpoint.save(step + 1, drafter, optimizer, generator)
    return drafter.eval(), max(start, end)


def corpus_stream(target_dir, files) -> TokenStream:
    """Text files tokenised with the target's own tokenizer.json, as <bos> text <eos> documents."""
    from pathlib import Path

    from tokenizers import Tokenizer

    tok_path = Path(target_dir) / "tokenizer.json"
    if not tok_path.is_file():
        raise MtpEdgeError(f"{target_dir} has no tokenizer.json: train-drafter tokenises the corpus with the target's tokenizer.")
    tokenizer = Tokenizer.from_file(str(tok_path))
    eos = _first_eos(target_dir)
    ids: list[int] = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise MtpEdgeError(f"corpus file {f} does not exist.")
        ids.extend(tokenizer.encode(path.read_text(encoding="utf-8", errors="replace")).ids)
        ids.append(eos)
    return TokenStream(torch.tensor(ids, dtype=torch.int32))


def _first_eos(target_dir) -> int:
    from ..config import target_config_from_folder

    eos = target_config_from_folder(target_dir).eos_token_ids
    return eos[0] if eos else 1


def run_train_drafter(
    target_dir,
    stream: TokenStream,
    out_dir,
    *,
    work_dir=None,
    init_dir=None,
    steps: int = 600,
    batch_size: int = 16,
    length: int = 256,
    unroll: int = 4,
    lr: float = 2e-3,
    seed: int = 0,
    save_dtype: torch.dtype = torch.bfloat16,
    stop_after: int | None = None,
    **geometry,
) -> Gemma4Drafter | None:
    """The train-drafter command: load the target, build or load the drafter, distil, save a HF folder."""
    from pathlib import Path

    from ..hf_format import save_drafter
    from ..load import load_drafter, load_target

    target = load_target(target_dir, max_seq_len=1)
    if init_dir is not None:  # adapt an existing drafter, keeping its clusters
        drafter = load_drafter(init_dir, target=target.cfg)
    else:
        drafter = init_drafter(drafter_config_for(target.cfg, **geometry), target, seed)
    work = Path(work_dir) if work_dir else Path(out_dir).with_name(Path(out_dir).name + ".work")
    checkpoint = Checkpoint(work / "drafter.ckpt")
    drafter, done = train_drafter(target, drafter, stream, steps=steps, batch_size=batch_size, length=length,
                                  unroll=unroll, lr=lr, seed=seed, checkpoint=checkpoint, stop_after=stop_after)
    if done < steps:  # a partly trained drafter is not written as a result
        print(f"stopped at step {done} of {steps}; rerun the same command to resume from {checkpoint.path}", flush=True)
        return None
    save_drafter(drafter, out_dir, dtype=save_dtype)
    return drafter
