"""Counter-based randomness: every random choice is a pure function of (seed, purpose, position).

That is what makes the loader stateless: any process can compute the draw for sample position p
without having seen positions < p, so resume, worker count and world size cannot change it.
"""
import numpy as np

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)

# One constant per purpose, so that the draws of different purposes are independent.
SOURCE_DRAW = 0x5EED_0001
SHARD_SHUFFLE = 0x5EED_0003
WINDOW_SHUFFLE = 0x5EED_0004
SAMPLE_AUGMENT = 0x5EED_0005
CAPTION_SOURCE = 0x5EED_0006


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (Steele et al. 2014), vectorised over a uint64 array."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        return z ^ (z >> np.uint64(31))


def hash64(seed: int, purpose: int, positions: np.ndarray) -> np.ndarray:
    """uint64 hashes of (seed, purpose, position) for an int64 array of positions."""
    key = splitmix64(np.array([(seed * 0x100000001B3 + purpose) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    return splitmix64(np.asarray(positions, dtype=np.uint64) ^ key)


def uniform(seed: int, purpose: int, positions: np.ndarray) -> np.ndarray:
    """Floats in [0, 1), one per position (53 random bits each)."""
    return (hash64(seed, purpose, positions) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def rng(seed: int, purpose: int, *keys: int) -> np.random.Generator:
    """A numpy Generator keyed by (seed, purpose, keys...) for longer draws (permutations, crops)."""
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, purpose, *keys])
