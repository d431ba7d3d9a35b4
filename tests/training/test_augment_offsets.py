"""Augmentation really crops and flips: offsets cover -pad..pad, borders are zero, flips ~1/2.

The input is a known image whose pixels spell their own position (channel 0: row + 1,
channel 1: column + 1, channel 2: 255), so each output's offset and flip can be read off its
centre pixel; the whole output is then compared with a crop built here by hand (a zero canvas
with the image pasted at the offset), not with the code's own padding. A crop that never moves
(pad=0) or a range that misses an offset fails.
"""
import torch

import l2bn.train
from l2bn.config import TrialConfig
from l2bn.data import augment
from l2bn.train import train

PAD = 4  # README: random crop with 4-pixel zero padding


def coded_images(n: int, size: int = 32) -> torch.Tensor:
    """n copies of a (3, size, size) uint8 image that spells each pixel's position; no zeros."""
    pos = torch.arange(1, size + 1, dtype=torch.uint8)
    one = torch.stack([pos[:, None].expand(size, size), pos[None, :].expand(size, size),
                       torch.full((size, size), 255, dtype=torch.uint8)])
    return one.expand(n, 3, size, size).clone()


def shifted(image: torch.Tensor, oy: int, ox: int) -> torch.Tensor:
    """out[..., i, j] = image[..., i + oy, j + ox], zero where that falls outside the image."""
    h, w = image.shape[-2:]
    out = torch.zeros_like(image)
    out[..., max(-oy, 0):h - max(oy, 0), max(-ox, 0):w - max(ox, 0)] = \
        image[..., max(oy, 0):h - max(-oy, 0), max(ox, 0):w - max(-ox, 0)]
    return out


def decode(out: torch.Tensor, pad: int) -> tuple[list[int], list[int], list[int]]:
    """(oy, ox, flipped) of each augmented coded image, checked against a hand-built crop."""
    size = out.shape[-1]
    c = size // 2  # the centre pixel is never padding (pad < size/2)
    image = coded_images(1, size)[0]
    centre, right = out[:, :, c, c].long(), out[:, :, c, c + 1].long()
    flipped = (right[:, 1] < centre[:, 1]).long()  # column numbers run backwards
    oy = centre[:, 0] - 1 - c
    ox = centre[:, 1] - 1 - torch.where(flipped.bool(), size - 1 - c, c)
    for i in range(len(out)):
        crop = shifted(image, int(oy[i]), int(ox[i]))
        expected = crop.flip(2) if flipped[i] else crop
        assert torch.equal(out[i], expected), \
            f"output {i} is not the zero-padded crop at ({int(oy[i])}, {int(ox[i])})"
    return oy.tolist(), ox.tolist(), flipped.tolist()


def test_crops_shift_by_every_offset_up_to_pad_with_zero_borders_and_flip_half():
    images = coded_images(2000)
    out = augment(images, torch.Generator().manual_seed(1))
    oy, ox, flipped = decode(out, PAD)
    offsets = list(range(-PAD, PAD + 1))
    assert sorted(set(oy)) == offsets, "vertical offsets seen"
    assert sorted(set(ox)) == offsets, "horizontal offsets seen"
    assert len(set(zip(oy, ox, strict=True))) == len(offsets) ** 2  # every (dy, dx) pair
    assert 0.45 < sum(flipped) / len(flipped) < 0.55  # 2000 fair coins: sd 0.011
    for axis in (oy, ox):  # uniform: each of the 9 offsets ~1/9 of the draws (sd 0.007)
        shares = [axis.count(o) / len(axis) for o in offsets]
        assert max(abs(s - 1 / 9) for s in shares) < 0.035, shares
    # Zero padding at the border the crop moved past: exactly |oy| zero rows (channel 2 is
    # 255 everywhere in the image, so a zero there is padding).
    zero_rows = (out[:, 2] == 0).all(dim=2).sum(1)
    zero_cols = (out[:, 2] == 0).all(dim=1).sum(1)
    assert zero_rows.tolist() == [abs(o) for o in oy]
    assert zero_cols.tolist() == [abs(o) for o in ox]
    assert max(zero_rows.tolist()) == PAD


def test_training_loop_crops_with_4_pixel_padding(monkeypatch):
    """The trial's own call of augment (its arguments, not just augment's default) crops by
    up to 4 pixels: each call is replayed on coded images with the same generator state."""
    draws = []

    def spy(images, gen, *args, **kwargs):
        probe_gen = torch.Generator().manual_seed(0)
        probe_gen.set_state(gen.get_state())
        probe = augment(coded_images(len(images)), probe_gen, *args, **kwargs)
        out = augment(images, gen, *args, **kwargs)
        assert torch.equal(gen.get_state(), probe_gen.get_state())  # same draws
        draws.append(decode(probe, PAD))
        return out

    monkeypatch.setattr(l2bn.train, "augment", spy)
    cfg = TrialConfig(data="synthetic", device="cpu", width=4, batch_size=64, epochs=1,
                      n_train=256, n_test=64, lr=0.01)
    train(cfg)
    assert len(draws) == 4  # 256 // 64 steps, each batch augmented
    oy, ox, flipped = ([v for d in draws for v in d[k]] for k in range(3))
    assert sorted(set(oy)) == sorted(set(ox)) == list(range(-PAD, PAD + 1))
    assert 0.4 < sum(flipped) / len(flipped) < 0.6
