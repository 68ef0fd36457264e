"""Exact and near-duplicate detection across sources: normalized hashes, MinHash and LSH banding.

The work splits in two so a stage can spread the heavy part over workers:

1. Per shard, in parallel: `exact_hash(text)` (16 bytes) and `MinHasher.signature(text)`
   (``num_perm`` uint32, 512 bytes at 128) are pure functions of the text, the same in any
   process (no salted Python `hash`; constants from a fixed splitmix64 sequence).
2. On disk, in steps over partitions (`tasks.text.dedup_steps`): exact groups and clusters
   of near copies, each keeping its earliest document in input order. Same order in, same
   drops out, whatever the number of workers or how texts were batched.

Decisions worth knowing:
- Shingles are 5 consecutive *words* of the normalized text, where a word is a run of
  non-space characters or a single Han/Kana character (as in `tasks.text.features`): word
  5-grams for spaced languages, as in datatrove and Lee et al. 2022, and character 5-grams
  for Chinese/Japanese, which have no spaces. Character 5-grams everywhere would give English
  ~5x the shingles to hash and shingles that unrelated texts share more often.
- Shingle hashing is vectorized: words hash as polynomial hashes of their code points from
  one prefix sum (`features.span_hashes`), 5-grams combine word hashes. On the gensim enwiki
  sample whole signatures come out ~4.5x faster than with each shingle hashed by
  `hashlib.blake2b` (`benchmarks/dedup_throughput.py`); xxhash (not installed) would still need
  a Python call per shingle. The 128 permutations are now most of the cost.
- Permutations are multiply-shift hashes ``((a * x + b) mod 2**64) >> 32`` with random odd
  `a`, applied to all shingles at once with numpy, in blocks to bound memory.
- LSH with `bands` x `rows` <= `num_perm` makes documents with Jaccard similarity s candidates
  with probability ``1 - (1 - s**rows)**bands``. `lsh_params` puts the curve low (21 x 6 for
  128: 99.8 % of pairs at 0.8 become candidates), because each candidate is then verified
  against the threshold by a second, more precise estimate: a bottom-k sketch (`bottom_k`,
  the 512 smallest shingle hashes), whose error at 0.8 is about 0.018 against 0.035 for the
  128 signature values. MinHash alone cannot both catch pairs at 0.83 and leave pairs at
  0.70 alone; datatrove, which does not verify, merges many pairs below its threshold.
  The banding and the check run in `tasks.text.dedup_steps`.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable

import numpy as np

from kiln.errors import KilnError
from tasks.text.features import PUNCT, char_classes, code_points, mix64, span_hashes, word_spans

_SHINGLE_MULT = np.uint64(0xD1B54A32D192ED03)
_BLOCK = 1024  # shingles per permutation block: 1 MiB at 128 perms stays in cache (2048: measured 3-8x slower)
EMPTY = np.uint32(0xFFFFFFFF)
"""Every value of the signature of a text with no words; such signatures match nothing."""


def normalize_for_dedup(text: str) -> str:
    """Text as compared for duplicates: NFKC, case-folded, punctuation and symbols removed, whitespace collapsed."""
    return " ".join(_normalized_code_points(text).tobytes().decode("utf-32-le", errors="surrogatepass").split())


def _normalized_code_points(text: str) -> np.ndarray:
    """Code points of the NFKC, case-folded text with Unicode punctuation and symbols (P*, S*) turned to spaces.

    A lookup table, not ``re.sub(r"[^\\w\\s]", ...)``: Python's \\w leaves out combining marks and
    would cut Hindi or Thai words apart, and a regex class of all P*/S* ranges ran at ~1 MB/s.
    """
    cps = code_points(unicodedata.normalize("NFKC", text).casefold())
    return np.where(char_classes(cps) == PUNCT, np.uint32(32), cps)


def exact_hash(text: str) -> bytes:
    """16-byte blake2b of the normalized text: equal for texts that differ only in case, spacing, punctuation."""
    return hashlib.blake2b(normalize_for_dedup(text).encode("utf-8"), digest_size=16).digest()


class MinHasher:
    """MinHash signatures of texts; instances with equal arguments give equal signatures in any process."""

    def __init__(self, num_perm: int = 128, shingle: int = 5, seed: int = 1) -> None:
        if num_perm < 1 or shingle < 1:
            raise KilnError(f"MinHasher: num_perm and shingle must be >= 1, got {num_perm}, {shingle}")
        self.num_perm, self.shingle, self.seed = num_perm, shingle, seed
        # Constants from splitmix64, not numpy's RNG: numpy does not promise the same stream across
        # versions, and a changed constant would silently change which documents are dropped.
        values = _splitmix64(seed, 2 * num_perm)
        self._a = np.array(values[:num_perm], dtype=np.uint64) | np.uint64(1)  # odd: multiply is a bijection
        self._b = np.array(values[num_perm:], dtype=np.uint64)

    def __repr__(self) -> str:
        return f"MinHasher(num_perm={self.num_perm}, shingle={self.shingle}, seed={self.seed})"

    def shingle_hashes(self, text: str) -> np.ndarray:
        """uint64 hash of every shingle of the normalized text (one hash of all words if fewer than `shingle`)."""
        cps = _normalized_code_points(text)
        starts, ends = word_spans(char_classes(cps))
        words = span_hashes(cps, starts, ends)
        k = min(self.shingle, len(words))
        if k == 0:
            return words  # empty
        m = len(words) - k + 1
        h = words[:m]
        for j in range(1, k):
            h = h * _SHINGLE_MULT + words[j : j + m]
        return mix64(h)

    def signature(self, text: str) -> np.ndarray:
        """``num_perm`` uint32 minima of the permuted shingle hashes; all `EMPTY` for a text without words."""
        return self.signature_of_hashes(self.shingle_hashes(text))

    def signature_of_hashes(self, shingles: np.ndarray) -> np.ndarray:
        """The signature of a set of shingle hashes (duplicates do not change it)."""
        best = np.full(self.num_perm, np.uint64(0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
        a, b = self._a[:, None], self._b[:, None]
        buf = np.empty((self.num_perm, min(_BLOCK, len(shingles))), dtype=np.uint64)
        for lo in range(0, len(shingles), _BLOCK):
            block = shingles[None, lo : lo + _BLOCK]
            out = buf[:, : block.shape[1]]
            np.multiply(a, block, out=out)  # in place: no temporaries per block
            np.add(out, b, out=out)
            # The minimum of the top 32 bits is the top 32 bits of the minimum: shift once, at the end.
            np.minimum(best, out.min(axis=1), out=best)
        return (best >> np.uint64(32)).astype(np.uint32)

    def fingerprint(self, text: str, sketch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """The signature (for LSH) and the bottom-k sketch (to verify candidates) from one pass over the shingles."""
        shingles = self.shingle_hashes(text)
        return self.signature_of_hashes(shingles), bottom_k(shingles, sketch_size)

    def signatures(self, texts: Iterable[str]) -> np.ndarray:
        """Signatures of many texts as one ``(n, num_perm)`` uint32 array (a shard's worth)."""
        sigs = [self.signature(t) for t in texts]
        return np.stack(sigs) if sigs else np.empty((0, self.num_perm), dtype=np.uint32)


def bottom_k(shingles: np.ndarray, k: int) -> np.ndarray:
    """The `k` smallest distinct shingle hashes (their top 32 bits), ascending, padded with `EMPTY`.

    A bottom-k sketch: the k smallest values of A ∪ B, read from the two sketches, are a
    uniform sample of the union, and the share of them in both sketches estimates the
    Jaccard similarity (`sketch_jaccard`) with less variance than k MinHash values, because
    it samples without replacement; for sets of at most k shingles it is exact. It costs one
    sort of the document's shingles, next to ``num_perm`` passes for the MinHash signature.
    """
    values = np.unique((shingles >> np.uint64(32)).astype(np.uint32))
    values = values[values != EMPTY][:k]
    out = np.full(k, EMPTY, dtype=np.uint32)
    out[: len(values)] = values
    return out


def sketch_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of row pairs of two ``(n, k)`` arrays of `bottom_k` sketches."""
    k = a.shape[1]
    merged = np.sort(np.concatenate([a, b], axis=1), axis=1)
    valid = merged != EMPTY
    new = np.ones(merged.shape, dtype=bool)
    new[:, 1:] = merged[:, 1:] != merged[:, :-1]
    distinct = new & valid
    in_union_k = distinct & (np.cumsum(distinct, axis=1, dtype=np.int32) <= k)  # the k smallest values of the union
    twice = np.zeros(merged.shape, dtype=bool)
    twice[:, :-1] = merged[:, 1:] == merged[:, :-1]  # a value in both sketches (each holds it once)
    size = in_union_k.sum(axis=1)
    return (in_union_k & twice).sum(axis=1) / np.maximum(size, 1)


def _splitmix64(seed: int, n: int) -> list[int]:
    """n 64-bit values of the splitmix64 sequence started at `seed` (plain Python: the same everywhere)."""
    mask, out, x = (1 << 64) - 1, [], seed & ((1 << 64) - 1)
    for _ in range(n):
        x = (x + 0x9E3779B97F4A7C15) & mask
        z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity estimated from two signatures: the share of equal values."""
    return float(np.count_nonzero(a == b)) / len(a)


def lsh_params(num_perm: int, threshold: float, min_recall: float = 0.995) -> tuple[int, int]:
    """(bands, rows), ``bands x rows <= num_perm``: the most rows per band whose candidate chance at `threshold`,
    ``1 - (1 - threshold**rows)**bands``, is still at least `min_recall`.

    Candidates are verified afterwards (`sketch_jaccard`), so the curve can sit well below the
    threshold: a pair at the threshold is missed 0.5 % of the time at most (datatrove's 14 x 8
    misses 5 % at 0.8); more rows keep the number of unrelated candidates down. 128 at 0.8
    gives 21 x 6 (0.17 % missed at 0.8).
    """
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= min_recall:
            return bands, rows
    raise KilnError(f"dedup threshold {threshold}: no banding of num_perm={num_perm} reaches it; raise num_perm")
