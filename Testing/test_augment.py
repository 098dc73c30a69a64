"""Training augmentation: reproducible, bounded, geometry shared by the moving image and its masks."""

import torch

from TotalRegistratorLib.learned.training import augment as aug

SHAPE = (20, 16, 24)  # K, J, I


def pair() -> dict[str, torch.Tensor]:
    k, j, i = torch.meshgrid(*[torch.linspace(0, 1, n) for n in SHAPE], indexing="ij")
    image = (0.5 + 0.4 * torch.sin(6 * k) * torch.cos(5 * j) * torch.sin(4 * i))[None, None]
    mask = ((k - 0.5) ** 2 + (j - 0.5) ** 2 + (i - 0.5) ** 2 < 0.1).to(torch.uint8)[None, None]
    return {"fixed": image.clone(), "moving": image.clone(), "fixed_masks": mask.clone(), "moving_masks": mask.clone()}


def test_same_generator_state_gives_the_same_pair_and_another_gives_another():
    a = aug.augment(pair(), torch.Generator().manual_seed(3))
    b = aug.augment(pair(), torch.Generator().manual_seed(3))
    c = aug.augment(pair(), torch.Generator().manual_seed(4))
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert not torch.equal(a["moving"], c["moving"])


def test_appearance_stays_in_range_and_changes_the_grey_values():
    batch = pair()
    out = aug.augment(batch, torch.Generator().manual_seed(0))
    for key in ("fixed", "moving"):
        assert float(out[key].min()) >= 0.0 and float(out[key].max()) <= 1.0
    assert not torch.equal(out["fixed"], batch["fixed"])
    torch.testing.assert_close(out["fixed_masks"], batch["fixed_masks"])  # the fixed scan is never moved
    assert torch.equal(batch["moving"], pair()["moving"])  # the input batch is left unchanged


def test_zero_strength_is_the_identity_and_the_field_moves_image_and_masks_together():
    g = torch.Generator().manual_seed(1)
    identity = aug.smooth_sampling_grid(SHAPE, g, strength=0.0)
    image = pair()["moving"]
    torch.testing.assert_close(torch.nn.functional.grid_sample(image, identity, align_corners=True), image)
    grid = aug.smooth_sampling_grid(SHAPE, torch.Generator().manual_seed(2), strength=aug.WARP_MAX)
    shift = (grid - identity).abs().amax(dim=(0, 1, 2, 3)) * torch.tensor(SHAPE[::-1]) / 2  # voxels per axis
    assert (shift > 0.05).all() and (shift < 0.2 * torch.tensor(SHAPE[::-1])).all()
    batch = pair()
    batch["moving"] = batch["moving_masks"].float()  # an image equal to the mask must stay equal to it
    out = aug.augment(batch, torch.Generator().manual_seed(5))
    warped_mask = out["moving_masks"]
    assert not torch.equal(warped_mask, batch["moving_masks"].float())
    # the image went through the same field (and a monotone grey curve): it is high exactly where the mask is
    inside, outside = out["moving"][warped_mask > 0.9], out["moving"][warped_mask < 0.1]
    assert float(inside.mean()) > float(outside.mean()) + 0.5
