import torch

from gfpipe.model import extract_patches, patch_corners


def test_corners_follow_official_top_left_convention():
    action = torch.tensor([[0.0, 1.0], [0.5, 0.25], [0.999, 0.001]])
    corners = patch_corners(action, image_size=224, patch_size=96)
    assert corners.tolist() == [[0, 128], [64, 32], [127, 0]]


def test_corners_stay_inside_for_out_of_range_actions():
    corners = patch_corners(torch.tensor([[-0.2, 1.3]]), 128, 64)
    assert corners.tolist() == [[0, 64]]


def test_batched_extraction_equals_slicing_each_image():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(5, 3, 40, 40, generator=g)
    corners = torch.randint(0, 40 - 12 + 1, (5, 2), generator=g)
    patches = extract_patches(images, corners, 12)
    assert patches.shape == (5, 3, 12, 12)
    assert patches.is_contiguous(memory_format=torch.channels_last)  # the encoders' fast layout
    for i in range(5):
        r, c = corners[i].tolist()
        assert torch.equal(patches[i], images[i, :, r : r + 12, c : c + 12])


def test_extraction_from_a_store_by_index():
    g = torch.Generator().manual_seed(1)
    store = torch.randn(6, 3, 20, 20, generator=g)
    index = torch.tensor([4, 0, 4])
    corners = torch.tensor([[0, 0], [8, 3], [2, 10]])
    patches = extract_patches(store, corners, 10, image_index=index)
    for i, (src, (r, c)) in enumerate(zip(index.tolist(), corners.tolist(), strict=True)):
        assert torch.equal(patches[i], store[src, :, r : r + 10, c : c + 10])


def test_extraction_from_a_channels_last_store_equals_slicing():
    """The GPU engine keeps its store channels_last: the gather must not depend on the layout."""
    g = torch.Generator().manual_seed(2)
    store = torch.randn(4, 3, 24, 24, generator=g).contiguous(memory_format=torch.channels_last)
    index = torch.tensor([3, 1])
    corners = torch.tensor([[5, 0], [0, 14]])
    patches = extract_patches(store, corners, 10, image_index=index)
    for i, (src, (r, c)) in enumerate(zip(index.tolist(), corners.tolist(), strict=True)):
        assert torch.equal(patches[i], store[src, :, r : r + 10, c : c + 10])
