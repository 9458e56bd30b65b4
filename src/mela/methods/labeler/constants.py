"""The numbers the labeler's parts share: warning thresholds, noise-model factors and memory bounds."""

# Warning thresholds of key_diagnostics (see benchmarks/labeler_sweep.py for where they come from).
MAX_RELIABLE_DISTANCE_RATIO = 0.6
MAX_RELIABLE_COLLISION_RATE = 0.2
# Squared within-class sds, along the split direction, that two halves of one split class may sit apart.
SPLIT_ALLOWANCE = 4.0
# shared_noise: keys lying this many times further from their centroids than their images predict share a
# source; the quantile of the first pass's key-to-centroid statistics that measures it (keys matched to their
# own class's centroid; keys of a class not seen before lie further out).
SHARED_NOISE_RATIO = 1.3
SHARED_NOISE_QUANTILE = 0.2
# Keys per block of key-centroid distances, and pairs per block of within-task distances (memory bounds).
CHUNK_KEYS = 8192
CHUNK_PAIRS = 65536
# Centroids up to which the merge works on a (K, K) matrix; above, on candidate pairs (the same merges, memory ~ K).
DENSE_MERGE_MAX = 256
# Entries of one block of centroid-centroid products in the sparse merge's radius query (32 MB of float64).
CHUNK_ENTRIES = 1 << 22
MERGE_METHODS = ("auto", "dense", "sparse")
# oversplit_check: a global class looks split when another class would lie as close as its rival (the nearest class
# never sharing a task with it) with at most this chance; the warning fires above this share of split-looking classes
# (benchmarks/oversplit_signal.py), and only from this many groups on: each class with a rival looks split by chance
# with probability up to OVERSPLIT_ALPHA, so in a pile of a few dozen classes one or two groups are chance's.
OVERSPLIT_ALPHA = 0.05
MAX_OVERSPLIT_SHARE = 0.05
MIN_OVERSPLIT_GROUPS = 5
