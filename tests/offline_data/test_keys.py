"""String hashing and the key index, checked against Python sets and dicts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from offline_data.keys import KeyIndex, first_occurrence, hash_strings


def test_equal_strings_hash_equally_whatever_the_array_layout():
    values = ["", "a", "ab", "ba", "event-000001", "é", "a" * 300, None, "ab"]
    plain = hash_strings(pa.array(values))
    assert plain[2] == plain[8]
    for other in (
        hash_strings(pa.array(values, type=pa.large_string())),
        hash_strings(pc.dictionary_encode(pa.array(values))),
        hash_strings(pa.array(values), repeated=True),
        hash_strings(pa.chunked_array([values[:4], values[4:]])),
        hash_strings(pa.array(["zz", *values]).slice(1)),  # non-zero offset into the buffers
    ):
        valid = [i for i, v in enumerate(values) if v is not None]
        np.testing.assert_array_equal(other[valid], plain[valid])


def test_distinct_ids_get_distinct_hashes():
    ids = pa.array([f"ev{i}" for i in range(200_000)] + [f"{i:08d}" for i in range(100_000)] + ["", "a", "b"])
    hashes = hash_strings(ids)
    assert hashes.dtype == np.uint64
    assert len(np.unique(hashes)) == len(ids)
    # Reordered characters must not collide (a plain sum of bytes would).
    assert len(np.unique(hash_strings(pa.array(["abc", "acb", "bac", "bca", "cab", "cba"])))) == 6


def test_hash_spreads_over_all_bits():
    hashes = hash_strings(pa.array([f"p{i}" for i in range(4096)]))
    bits = (hashes[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    share = bits.mean(axis=0)
    assert np.all(np.abs(share - 0.5) < 0.05), share


def test_first_occurrence_points_to_the_earliest_equal_entry():
    hashes = np.array([5, 3, 5, 7, 3, 5], dtype=np.uint64)
    first, order = first_occurrence(hashes)
    np.testing.assert_array_equal(first, [0, 1, 0, 3, 1, 0])
    assert np.all(np.diff(hashes[order].astype(np.int64)) >= 0)
    assert first_occurrence(np.zeros(0, dtype=np.uint64))[0].shape == (0,)


@pytest.mark.parametrize("fanout", [2, 8])
def test_key_index_agrees_with_a_dict(fanout):
    rng = np.random.default_rng(0)
    index = KeyIndex({"flag": bool, "value": np.int64}, fanout=fanout)
    reference: dict[int, tuple[int, bool, int]] = {}
    universe = rng.integers(0, 2**63, 5000, dtype=np.int64).astype(np.uint64)
    for step in range(40):
        query = rng.choice(universe, 300)
        found = index.lookup(query)
        expected = [int(q) in reference for q in query]
        np.testing.assert_array_equal(found.found, expected)
        for i in np.flatnonzero(found.found):
            location, flag, value = reference[int(query[i])]
            assert (found.locations[i], found.payload["flag"][i], found.payload["value"][i]) == (location, flag, value)
        assert np.all(found.locations[~found.found] == -1)
        new = np.unique(query[~found.found])
        locations = np.arange(len(new), dtype=np.int64) + 1000 * step
        flags, values = rng.random(len(new)) < 0.5, rng.integers(0, 100, len(new))
        index.insert(new, locations, {"flag": flags, "value": values})
        reference.update({int(h): (int(loc), bool(f), int(v)) for h, loc, f, v in zip(new, locations, flags, values)})
        assert len(index) == len(reference)
    assert len(index._runs) < 40  # runs were merged


def test_insert_refuses_repeats_and_mismatched_payload():
    index = KeyIndex({"flag": bool})
    with pytest.raises(ValueError, match="hashes must be distinct"):
        index.insert(np.array([1, 1], dtype=np.uint64), np.array([0, 1]), {"flag": np.array([True, False])})
    with pytest.raises(ValueError, match=r"payload fields \[\], expected \['flag'\]"):
        index.insert(np.array([1], dtype=np.uint64), np.array([0]))
    with pytest.raises(ValueError, match="2 hashes but 1 locations"):
        index.insert(np.array([1, 2], dtype=np.uint64), np.array([0]), {"flag": np.array([True, False])})


def test_lookup_strings_handles_repeats_and_nulls():
    index = KeyIndex({"product": np.uint64})
    keys = pa.array(["img1", "img2"])
    index.insert(hash_strings(keys), np.array([10, 20]), {"product": np.array([7, 8], dtype=np.uint64)})
    lookup = index.lookup_strings(pa.array(["img2", None, "img9", "img1", "img2"]))
    np.testing.assert_array_equal(lookup.found, [True, False, False, True, True])
    np.testing.assert_array_equal(lookup.locations, [20, -1, -1, 10, 20])
    np.testing.assert_array_equal(lookup.payload["product"][lookup.found], [8, 7, 8])
    assert not index.lookup_strings(pa.array([None, None], type=pa.string())).found.any()
