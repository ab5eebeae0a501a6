"""The on-disk proposal cache: keys, invalidation, interrupted writes."""

import dataclasses

import numpy as np
from detkit_selective_search.cache import ProposalCache, batch_image_key, image_key, settings_key


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)


def test_round_trip_and_content_key(tmp_path):
    cache = ProposalCache("ss", {"k": 100}, root=tmp_path)
    boxes = np.array([[0, 0, 5, 5], [1, 2, 8, 9]], dtype=np.float32)
    assert cache.get(image_key(_image())) is None
    cache.put(image_key(_image()), boxes)
    np.testing.assert_array_equal(cache.get(image_key(_image())), boxes)
    assert cache.get(image_key(_image(1))) is None  # other pixels
    assert cache.get(image_key(_image()[:, ::-1])) is None  # a flipped copy is another entry
    assert (cache.hits, cache.misses) == (1, 3)
    assert (cache.folder / "settings.json").exists()


def test_get_or_compute_computes_on_a_miss_only(tmp_path):
    cache = ProposalCache("ss", {}, root=tmp_path)
    calls = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.array([[0, 0, 4, 4]], dtype=np.float64)

    key = image_key(_image())
    first = cache.get_or_compute(key, compute)
    assert first.dtype == np.float32 and first.tolist() == [[0, 0, 4, 4]]
    np.testing.assert_array_equal(cache.get_or_compute(key, compute), first)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    next(cache.folder.rglob("*.npy")).write_bytes(b"broken")  # an unreadable entry is recomputed
    cache.get_or_compute(key, compute)
    assert len(calls) == 2


def test_settings_change_invalidates(tmp_path):
    key = image_key(_image())
    ProposalCache("ss", {"k": 100, "sigma": 0.8}, root=tmp_path).put(key, np.zeros((1, 4), np.float32))
    assert ProposalCache("ss", {"sigma": 0.8, "k": 100}, root=tmp_path).get(key) is not None  # order-free
    assert ProposalCache("ss", {"k": 200, "sigma": 0.8}, root=tmp_path).get(key) is None
    assert settings_key({"a": 1}) != settings_key({"a": 2})


def test_corrupt_or_partial_entry_is_a_miss(tmp_path):
    cache = ProposalCache("ss", {}, root=tmp_path)
    cache.put(image_key(_image()), np.ones((3, 4), np.float32))
    entry = next(cache.folder.rglob("*.npy"))
    entry.write_bytes(entry.read_bytes()[:20])  # as if a non-atomic writer died mid-file
    assert cache.get(image_key(_image())) is None
    cache.put(image_key(_image()), np.ones((3, 4), np.float32))
    assert cache.get(image_key(_image())).shape == (3, 4)
    assert not [p for p in cache.folder.rglob(".*") if p.is_file()]  # no temporary files left


def test_batch_key_is_the_original_image_and_its_resized_size():
    import torch

    from detkit.stages.preprocess import ResizeNormalize

    torch.manual_seed(0)
    image = torch.rand(3, 48, 64)
    keys, before = [], torch.get_num_threads()
    try:
        for threads in (1, 2):  # resampling may differ in the last bit between thread counts; keys must not
            torch.set_num_threads(threads)
            batch, _ = ResizeNormalize(min_size=32, max_size=1000)([image])
            keys.append(batch_image_key(batch, 0))
    finally:
        torch.set_num_threads(before)
    assert keys[0] == keys[1]
    other, _ = ResizeNormalize(min_size=40, max_size=1000)([image])
    assert batch_image_key(other, 0) != keys[0]  # another size is another entry
    flipped, _ = ResizeNormalize(min_size=32, max_size=1000)([image.flip(-1)])
    assert batch_image_key(flipped, 0) != keys[0]
    bare = dataclasses.replace(batch, originals=None)  # without the originals: the resized pixels
    assert batch_image_key(bare, 0) == image_key(batch.rgb_uint8(0))
