"""How a model is trained (what a model is lives one folder up): token streams, schedules and
resumable checkpoints (common), the target's and the drafter's training loops (target, drafter),
balanced k-means for the drafter's clustered head (clusters), and the shipped pair's reproducible
recipe (`python -m mtp_edge.models.training.recipe`)."""
