"""ImageBatch pixel access."""

import torch

from detkit.structures import ImageBatch


def test_image_batch_rgb_undoes_normalization_and_padding():
    from detkit.stages.preprocess import ResizeNormalize

    torch.manual_seed(0)
    images = [torch.rand(3, 20, 30), torch.rand(3, 24, 20)]
    pre = ResizeNormalize(min_size=20, max_size=1000, size_divisible=32)
    batch, _ = pre(images)
    assert batch.tensor.shape[-2:] == (32, 32)
    for i, image in enumerate(images):
        assert torch.allclose(batch.rgb(i), image, atol=1e-5)
        expected = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert (batch.rgb_uint8(i).astype(int) - expected.astype(int)).__abs__().max() <= 1
    plain = ImageBatch(torch.full((1, 3, 4, 4), 0.5), [(2, 3)], [(2, 3)])
    assert plain.rgb(0).shape == (3, 2, 3) and plain.to("cpu").pixel_mean is None
