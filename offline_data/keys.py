"""String keys as 64-bit hashes, and an index of the keys seen so far that scales to tens of millions.

Duplicate detection (``event_id`` must be unique across a 10 M-row table) and reference checks
(``dwell.event_id -> impressions``) stream over tables that do not fit in memory as Python strings: a set
of 10 M ids costs about 1 GB of objects and a Python call per row. Here every key is reduced to a 64-bit
hash computed vectorised over the Arrow string buffers, and :class:`KeyIndex` keeps the hashes in sorted
numpy runs (about 30 bytes per key with its location, plus payload).

Hash collisions: two distinct keys share a hash with probability about 2^-64 per pair, so among 10 M keys
the chance of any collision is about n² / 2^65 ≈ 3e-6. A collision would show up as a (reported, never
silent) false ``duplicate`` or a missed ``dangling`` reference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Polynomial string hash h(s) = Σ_j s_j · P^j mod 2^64 (P odd, so it is invertible mod 2^64), followed by
# the splitmix64 finalizer (Steele, Lea & Flood 2014) so that nearby ids spread over all 64 bits.
_P = 0x9E3779B97F4A7C15
_P_INV = pow(_P, -1, 1 << 64)
_LENGTH_SALT = np.uint64(0xD6E8FEB86659FD93)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


class _Powers:
    """Cached P^j and P^-j (mod 2^64) for j < n, grown four-fold when a longer batch arrives."""

    def __init__(self) -> None:
        self.forward = np.ones(0, dtype=np.uint64)
        self.inverse = np.ones(0, dtype=np.uint64)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n > len(self.forward):
            size = max(n, 4 * len(self.forward), 1 << 20)
            self.forward = _powers(_P, size)
            self.inverse = _powers(_P_INV, size)
        return self.forward, self.inverse


def _powers(base: int, n: int) -> np.ndarray:
    """[base^0, ..., base^(n-1)] mod 2^64 by doubling: each step multiplies the filled prefix by base^filled."""
    powers = np.empty(n, dtype=np.uint64)
    powers[0] = 1
    filled = 1
    while filled < n:
        count = min(filled, n - filled)
        np.multiply(powers[:count], np.uint64(pow(base, filled, 1 << 64)), out=powers[filled : filled + count])
        filled += count
    return powers


_POWERS = _Powers()
_SLICE = 1 << 20
_CACHE_KEYS = 1 << 20
"""Indexes up to this many keys fit in cache: no point sorting queries for them."""
_BLOOM_BITS_PER_KEY = 32


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer, in place on a uint64 array."""
    x ^= x >> np.uint64(30)
    x *= _MIX1
    x ^= x >> np.uint64(27)
    x *= _MIX2
    x ^= x >> np.uint64(31)
    return x


def hash_strings(array: pa.Array | pa.ChunkedArray, *, repeated: bool = False) -> np.ndarray:
    """64-bit hashes of the values of a string array, computed vectorised over its Arrow buffers.

    Equal strings hash equally whatever the array type (string, large_string, string_view, dictionary) or
    its position in the buffers. Null entries get an arbitrary hash: mask them yourself.

    Args:
        array: [N] string-like values (other types are cast to string first).
        repeated: the values repeat a lot (ids of images, products): dictionary-encode first and hash each
            distinct value once, which is several times faster then (and slower for unique keys).

    Returns:
        [N] uint64 hashes.
    """
    if repeated and not pa.types.is_dictionary(array.type):
        array = pc.dictionary_encode(array)
    if isinstance(array, pa.ChunkedArray):
        if array.num_chunks == 0:
            return np.zeros(0, dtype=np.uint64)
        return np.concatenate([hash_strings(chunk) for chunk in array.chunks])
    if pa.types.is_dictionary(array.type):
        dictionary_hashes = hash_strings(array.dictionary)
        indices = array.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        if len(dictionary_hashes) == 0:
            return np.zeros(len(array), dtype=np.uint64)
        return dictionary_hashes[indices]
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        array = pc.cast(array, pa.string())
    n = len(array)
    if n > _SLICE:
        # Bounded temporaries: the weighted bytes are 8x the string data.
        return np.concatenate([hash_strings(array.slice(i, _SLICE)) for i in range(0, n, _SLICE)])
    offset_type = np.int64 if pa.types.is_large_string(array.type) else np.int32
    buffers = array.buffers()
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    width = np.dtype(offset_type).itemsize
    offsets = np.frombuffer(buffers[1], dtype=offset_type, count=n + 1, offset=array.offset * width).astype(np.int64)
    low, high = int(offsets[0]), int(offsets[-1])
    lengths = np.diff(offsets)
    hashes = np.zeros(n, dtype=np.uint64)
    if high > low:
        forward, inverse = _POWERS.get(high - low)
        data = np.frombuffer(buffers[2], dtype=np.uint8, count=high - low, offset=low)
        weighted = data.astype(np.uint64)
        weighted *= forward[: high - low]
        starts = offsets[:-1][lengths > 0] - low
        # Σ s_j P^(start+j) over each string, then shifted back by P^-start so the hash ignores position.
        sums = np.add.reduceat(weighted, starts)
        sums *= inverse[starts]
        hashes[lengths > 0] = sums
    hashes ^= lengths.astype(np.uint64) * _LENGTH_SALT
    return mix64(hashes)


def first_occurrence(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each entry, the index of the first entry with the same hash (itself when it is the first).

    Args:
        hashes: [N] uint64.

    Returns:
        ``(first, order)``: [N] int64 indices, ``first[i] < i`` marking entry ``i`` as a repeat within the
        array; and the [N] permutation that sorts ``hashes`` (reusable for :meth:`KeyIndex.insert`).
    """
    n = len(hashes)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(hashes)
    ordered = hashes[order]
    group_start = np.ones(n, dtype=bool)
    group_start[1:] = ordered[1:] != ordered[:-1]
    starts = np.flatnonzero(group_start)
    # The sort is not stable, so the first occurrence is the smallest original index in each group.
    group_first = np.minimum.reduceat(order, starts)
    first = np.empty(n, dtype=np.int64)
    first[order] = np.repeat(group_first, np.diff(np.append(starts, n)))
    return first, order


@dataclasses.dataclass(frozen=True)
class KeyLookup:
    """Result of :meth:`KeyIndex.lookup` for N query hashes."""

    found: np.ndarray
    """[N] bool: the key is in the index."""
    locations: np.ndarray
    """[N] int64: the location stored with the key (-1 where not found)."""
    payload: dict[str, np.ndarray]
    """Each payload field, [N] (zero where not found)."""


@dataclasses.dataclass
class _Run:
    """Sorted hashes and the ids (insertion numbers) of their keys."""

    level: int
    hashes: np.ndarray
    ids: np.ndarray


class _Column:
    """An append-only numpy array with doubling capacity."""

    def __init__(self, dtype: np.dtype, capacity: int) -> None:
        self.values = np.zeros(max(capacity, 1024), dtype=dtype)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        end = self.size + len(values)
        if end > len(self.values):
            grown = np.zeros(max(end, 2 * len(self.values)), dtype=self.values.dtype)
            grown[: self.size] = self.values[: self.size]
            self.values = grown
        self.values[self.size : end] = values
        self.size = end


class KeyIndex:
    """The set of keys seen so far (as 64-bit hashes), each with an int64 location and a small payload.

    Keys live in sorted runs of (hash, id) merged size-tiered (``fanout`` runs of one level merge into one
    of the next level, so each key is re-sorted about log_fanout(N / batch) times); locations and payload
    stay where they were appended, indexed by id, so merges move 16 bytes per key. In front of the runs
    sits a one-hash Bloom bit array holding at least 32 bits per key: a key never seen before, the common
    case, usually costs one random bit read and no binary search (false-positive rate <= 1/32).

    Memory per key: 8 bytes hash + 8 id + 8 location + the payload fields + 4-8 bytes of Bloom array, and
    twice the hash and id transiently for the keys of a merge.
    """

    def __init__(
        self, payload: Mapping[str, np.dtype | type] | None = None, *, fanout: int = 8, expected_keys: int = 0
    ) -> None:
        """Args:
        payload: name -> numpy dtype of the per-key fields stored with each key (e.g. ``{"clicked": bool}``).
        fanout: runs of one level merged at once; larger means fewer merges but more runs to search.
        expected_keys: keys likely to be inserted (e.g. a Parquet file's row count), so that the Bloom array
            is sized once instead of rebuilt as it grows; only a hint.
        """
        if fanout < 2:
            raise ValueError(f"fanout must be >= 2, got {fanout}")
        self._payload_dtypes = {name: np.dtype(dtype) for name, dtype in (payload or {}).items()}
        self._fanout = fanout
        self._runs: list[_Run] = []
        self._size = 0
        self._locations = _Column(np.dtype(np.int64), expected_keys)
        self._payload = {name: _Column(dtype, expected_keys) for name, dtype in self._payload_dtypes.items()}
        self._bloom_bits = max(16, (_BLOOM_BITS_PER_KEY * max(expected_keys, 1) - 1).bit_length())
        self._bloom = np.zeros(1 << (self._bloom_bits - 3), dtype=np.uint8)

    def __len__(self) -> int:
        return self._size

    @property
    def payload_fields(self) -> tuple[str, ...]:
        return tuple(self._payload_dtypes)

    def _bloom_slots(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bit = hashes >> np.uint64(64 - self._bloom_bits)
        return (bit >> np.uint64(3)).astype(np.int64), (np.uint8(1) << (bit & np.uint64(7)).astype(np.uint8))

    def _bloom_add(self, sorted_hashes: np.ndarray) -> None:
        # The bit index is the top bits of the hash, so sorted hashes give sorted bytes: OR the masks of each
        # byte together first (reduceat), then write each byte once (cheaper than np.bitwise_or.at).
        byte, mask = self._bloom_slots(sorted_hashes)
        starts = np.flatnonzero(np.diff(byte, prepend=-1))
        self._bloom[byte[starts]] |= np.bitwise_or.reduceat(mask, starts)

    def _bloom_grow(self) -> None:
        bits = self._bloom_bits
        while (1 << bits) < _BLOOM_BITS_PER_KEY * self._size:
            bits += 1
        if bits == self._bloom_bits:
            return
        self._bloom_bits = bits
        self._bloom = np.zeros(1 << (bits - 3), dtype=np.uint8)
        for run in self._runs:
            self._bloom_add(run.hashes)

    def _missing(self, n: int) -> KeyLookup:
        payload = {name: np.zeros(n, dtype=dtype) for name, dtype in self._payload_dtypes.items()}
        return KeyLookup(np.zeros(n, dtype=bool), np.full(n, -1, dtype=np.int64), payload)

    def lookup(self, hashes: np.ndarray) -> KeyLookup:
        """Find ``hashes`` [N] uint64 in the index."""
        result = self._missing(len(hashes))
        found, locations, payload = result.found, result.locations, result.payload
        if len(hashes) == 0 or self._size == 0:
            return result
        byte, mask = self._bloom_slots(hashes)
        candidates = np.flatnonzero(self._bloom[byte] & mask)
        if self._size > _CACHE_KEYS:
            # Searching in ascending order keeps numpy's binary searches close in memory (big indexes only).
            candidates = candidates[np.argsort(hashes[candidates])]
        for run in self._runs:
            if len(candidates) == 0:
                break
            query = hashes[candidates]
            position = np.searchsorted(run.hashes, query)
            position[position == len(run.hashes)] = 0
            hit = run.hashes[position] == query
            where, ids = candidates[hit], run.ids[position[hit]]
            found[where] = True
            locations[where] = self._locations.values[ids]
            for name, column in self._payload.items():
                payload[name][where] = column.values[ids]
            candidates = candidates[~hit]
        return result

    def lookup_strings(self, values: pa.Array) -> KeyLookup:
        """:meth:`lookup` of string ``values`` [N], each distinct value hashed and searched once.

        For columns whose values repeat (references to images, products); null entries are not found.
        """
        encoded = values if pa.types.is_dictionary(values.type) else pc.dictionary_encode(values)
        if len(encoded.dictionary) == 0:
            return self._missing(len(values))
        unique = self.lookup(hash_strings(encoded.dictionary))
        index = encoded.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        present = np.asarray(encoded.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        return KeyLookup(
            unique.found[index] & present,
            np.where(present, unique.locations[index], -1),
            {name: values_[index] for name, values_ in unique.payload.items()},
        )

    def insert(
        self,
        hashes: np.ndarray,
        locations: np.ndarray,
        payload: Mapping[str, np.ndarray] | None = None,
        *,
        order: np.ndarray | None = None,
    ) -> None:
        """Add keys that are distinct from each other and not yet in the index.

        Args:
            hashes: [N] uint64, pairwise distinct, none already present (use :meth:`lookup` and
                :func:`first_occurrence` first).
            locations: [N] int64, returned by :meth:`lookup` for these keys (e.g. a packed file and row).
            payload: each field declared at construction, [N].
            order: [N] a permutation sorting ``hashes`` ascending, when the caller already has one.

        Raises:
            ValueError: mismatched lengths, missing payload fields, or repeated hashes.
        """
        payload = dict(payload or {})
        n = len(hashes)
        if len(locations) != n:
            raise ValueError(f"insert: {n} hashes but {len(locations)} locations")
        if set(payload) != set(self._payload_dtypes):
            raise ValueError(f"insert: payload fields {sorted(payload)}, expected {sorted(self._payload_dtypes)}")
        for name, values in payload.items():
            if len(values) != n:
                raise ValueError(f"insert: payload {name!r} has {len(values)} values for {n} hashes")
        if n == 0:
            return
        if order is None:
            order = np.argsort(hashes)
        run = _Run(0, np.asarray(hashes, dtype=np.uint64)[order], self._size + np.asarray(order, dtype=np.int64))
        if n > 1 and bool(np.any(run.hashes[1:] == run.hashes[:-1])):
            raise ValueError("insert: hashes must be distinct (filter repeats with first_occurrence)")
        self._locations.extend(np.asarray(locations, dtype=np.int64))
        for name, values in payload.items():
            self._payload[name].extend(np.asarray(values, dtype=self._payload_dtypes[name]))
        self._runs.append(run)
        self._size += n
        if (1 << self._bloom_bits) < _BLOOM_BITS_PER_KEY * self._size:
            self._bloom_grow()
        else:
            self._bloom_add(run.hashes)
        self._merge_tail()

    def _merge_tail(self) -> None:
        while len(self._runs) >= self._fanout:
            tail = self._runs[-self._fanout :]
            if any(run.level != tail[0].level for run in tail):
                return
            hashes = np.concatenate([r.hashes for r in tail])
            ids = np.concatenate([r.ids for r in tail])
            # Each run is sorted: a stable sort of their concatenation is a cheap k-way merge (timsort).
            order = np.argsort(hashes, kind="stable")
            self._runs[-self._fanout :] = [_Run(tail[0].level + 1, hashes[order], ids[order])]
