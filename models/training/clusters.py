"""Balanced spherical k-means over LM-head rows: the token clusters of the drafter's centroid head.

The centroid head scores clusters by `hidden @ centroids.T` with each centroid the mean of its
cluster's rows, i.e. by the cluster's mean logit. So tokens that score high for the same hidden
states must share a cluster: rows are grouped by direction (cosine), since a token's logit is
|h| |row| cos. Every cluster holds exactly V / C tokens because the head gathers a fixed-size
block of `token_ordering` per cluster.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import CheckpointError

CHUNK_ROWS = 2048  # rows per similarity block: CHUNK_ROWS x C floats at a time, never V x C
CANDIDATES = 32  # best clusters each row may propose to before it is re-scored
INIT_SAMPLE_PER_CLUSTER = 8  # k-means++ seeds from a subsample of this many rows per cluster


@torch.no_grad()
def balanced_kmeans(
    rows: torch.Tensor, num_clusters: int, iters: int = 10, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """rows [V, D] -> (token_ordering LongTensor [V], centroids float32 [num_clusters, D]).

    token_ordering.view(num_clusters, -1)[c] lists the tokens of cluster c; centroids[c] is the
    mean of those tokens' rows. `iters` counts assignment passes, the first from k-means++ seeds.
    Deterministic for a given seed; runs on rows.device.
    """
    if rows.dim() != 2:
        raise CheckpointError(f"balanced_kmeans expects rows [V, D], got shape {list(rows.shape)}.")
    vocab = rows.shape[0]
    if num_clusters <= 0 or vocab % num_clusters:
        raise CheckpointError(
            f"cannot split {vocab} tokens into {num_clusters} equal clusters: num_clusters must divide the vocabulary size."
        )
    size = vocab // num_clusters
    rows = rows.float()
    unit = F.normalize(rows, dim=1)
    generator = torch.Generator().manual_seed(seed)
    directions = _kmeans_pp(unit, num_clusters, generator)
    assign = _balanced_assign(unit, directions, size)
    for _ in tqdm(range(iters - 1), desc="balanced k-means", disable=iters < 5, leave=False):
        directions = F.normalize(_cluster_sums(unit, assign, num_clusters), dim=1)
        new = _balanced_assign(unit, directions, size)
        if torch.equal(new, assign):
            break
        assign = new
    ordering = torch.argsort(assign, stable=True)
    return ordering, _cluster_sums(rows, assign, num_clusters) / size


def _cluster_sums(x: torch.Tensor, assign: torch.Tensor, num_clusters: int) -> torch.Tensor:
    return torch.zeros(num_clusters, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, assign, x)


def _kmeans_pp(unit: torch.Tensor, num_clusters: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (cosine distance) on a row subsample.

    Random rows as seeds often put two seeds in one natural cluster and none in another, and a
    balanced assignment then splits both clusters evenly between the two seeds and stays there.
    """
    sample = torch.randperm(unit.shape[0], generator=generator)[: num_clusters * INIT_SAMPLE_PER_CLUSTER]
    x = unit[sample.to(unit.device)].cpu()
    picks = [int(torch.randint(x.shape[0], (1,), generator=generator))]
    dist = 1.0 - x @ x[picks[0]]
    for _ in range(num_clusters - 1):
        # The small floor keeps sampling defined when every remaining row duplicates a seed.
        weights = dist.clamp_min(0).square() + 1e-12
        pick = int(torch.multinomial(weights, 1, generator=generator))
        picks.append(pick)
        dist = torch.minimum(dist, 1.0 - x @ x[pick])
    return x[picks].to(unit.device)


def _top_open_clusters(x: torch.Tensor, directions: torch.Tensor, open_: torch.Tensor, k: int):
    """Per row, the k most similar clusters that still have room, best first: (scores, ids) [N, k]."""
    n = x.shape[0]
    closed = torch.where(open_, 0.0, float("-inf")).to(x.device)
    # Preallocated outputs and one reused block: fresh per-chunk temporaries fragmented the CPU
    # heap into several GB of resident memory at V = 262144.
    scores = torch.empty(n, k, device=x.device)
    ids = torch.empty(n, k, dtype=torch.long, device=x.device)
    block = torch.empty(min(n, CHUNK_ROWS), directions.shape[0], device=x.device)
    for start in range(0, n, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, n)
        sims = torch.matmul(x[start:stop], directions.T, out=block[: stop - start])
        sims += closed
        torch.topk(sims, k, dim=1, out=(scores[start:stop], ids[start:stop]))
    return scores, ids


def _balanced_assign(unit: torch.Tensor, directions: torch.Tensor, size: int) -> torch.Tensor:
    """Capacity-constrained assignment, each cluster exactly `size` rows.

    Rounds of proposals: every pending row proposes to its best candidate cluster with room
    left; a cluster keeps its best-scoring proposals up to its free room and rejects the rest,
    which it can only do once it is full, so a rejected row moves on next round. Rows that run
    out of candidates are re-scored against the clusters still open, with twice the candidates.
    """
    device = unit.device
    num_clusters = directions.shape[0]
    assign = torch.full((unit.shape[0],), -1, dtype=torch.long, device=device)
    free = torch.full((num_clusters,), size, dtype=torch.long, device=device)
    k = CANDIDATES
    while (todo := (assign < 0).nonzero().squeeze(1)).numel():
        open_ = free > 0
        scores, cands = _top_open_clusters(unit[todo], directions, open_, min(k, int(open_.sum())))
        pending = torch.arange(todo.numel(), device=device)
        while pending.numel():
            has_room = free[cands[pending]] > 0
            alive = has_room.any(1)
            pending, has_room = pending[alive], has_room[alive]
            if not pending.numel():
                break
            first = has_room.int().argmax(1)  # candidates are sorted, so the first with room is the best
            cluster = cands[pending, first]
            score = scores[pending, first]
            # Group proposals by cluster, best score first, and rank them within their cluster.
            order = torch.argsort(score, descending=True, stable=True)
            order = order[torch.argsort(cluster[order], stable=True)]
            cluster, pending = cluster[order], pending[order]
            counts = torch.bincount(cluster, minlength=num_clusters)
            rank = torch.arange(cluster.numel(), device=device) - (counts.cumsum(0) - counts)[cluster]
            accepted = rank < free[cluster]
            assign[todo[pending[accepted]]] = cluster[accepted]
            free -= torch.bincount(cluster[accepted], minlength=num_clusters)
            pending = pending[~accepted]
        k *= 2
    return assign
