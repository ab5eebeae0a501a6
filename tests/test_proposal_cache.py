"""The on-disk proposal cache: keys, invalidation, interrupted writes."""

import numpy as np

from detkit.proposal_cache import ProposalCache, settings_key


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)


def test_round_trip_and_content_key(tmp_path):
    cache = ProposalCache("ss", {"k": 100}, root=tmp_path)
    boxes = np.array([[0, 0, 5, 5], [1, 2, 8, 9]], dtype=np.float32)
    assert cache.get(_image()) is None
    cache.put(_image(), boxes)
    np.testing.assert_array_equal(cache.get(_image()), boxes)
    assert cache.get(_image(1)) is None  # other pixels
    assert cache.get(_image()[:, ::-1]) is None  # a flipped copy is another entry
    assert (cache.hits, cache.misses) == (1, 3)
    assert (cache.folder / "settings.json").exists()


def test_settings_change_invalidates(tmp_path):
    ProposalCache("ss", {"k": 100, "sigma": 0.8}, root=tmp_path).put(_image(), np.zeros((1, 4), np.float32))
    assert ProposalCache("ss", {"sigma": 0.8, "k": 100}, root=tmp_path).get(_image()) is not None  # order-free
    assert ProposalCache("ss", {"k": 200, "sigma": 0.8}, root=tmp_path).get(_image()) is None
    assert settings_key({"a": 1}) != settings_key({"a": 2})


def test_corrupt_or_partial_entry_is_a_miss(tmp_path):
    cache = ProposalCache("ss", {}, root=tmp_path)
    cache.put(_image(), np.ones((3, 4), np.float32))
    entry = next(cache.folder.rglob("*.npy"))
    entry.write_bytes(entry.read_bytes()[:20])  # as if a non-atomic writer died mid-file
    assert cache.get(_image()) is None
    cache.put(_image(), np.ones((3, 4), np.float32))
    assert cache.get(_image()).shape == (3, 4)
    assert not [p for p in cache.folder.rglob(".*") if p.is_file()]  # no temporary files left
