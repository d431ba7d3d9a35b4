"""Images/s of l2bn's training step against a conventional torchvision + DataLoader pipeline.

Both train the same ConvNet (SGD, batch norm, L2) on the same real CIFAR-10 copy, in the same
process, one after the other; the ratio is l2bn / conventional.

    python benchmarks/train_throughput.py --data-dir DIR [--device cuda] [--steps 60]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from l2bn.config import TrialConfig
from l2bn.data import MEAN, STD
from l2bn.model import ConvNet
from l2bn.reference import build_optimizer
from l2bn.train import Trial, resolve_device


class LocalCIFAR10(datasets.CIFAR10):
    """torchvision's dataset on a user's copy: its MD5 check rejects re-encoded copies."""

    meta = {**datasets.CIFAR10.meta, "md5": None}

    def _check_integrity(self) -> bool:
        return True


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def l2bn_images_per_s(cfg: TrialConfig, steps: int) -> float:
    """The trial's own epoch loop (device-resident data, on-device augmentation, metrics)."""
    trial = Trial(cfg.replace(n_train=cfg.batch_size * steps))
    trial.train_epoch()  # warm-up: allocator, cuDNN autotune, lazy init
    sync(trial.device)
    start = time.perf_counter()
    stats = trial.train_epoch()
    sync(trial.device)
    return stats["train_images"] / (time.perf_counter() - start)


def conventional_images_per_s(cfg: TrialConfig, steps: int, workers: int) -> float:
    """torchvision CIFAR10 + transforms + DataLoader, the usual tutorial pipeline."""
    device = resolve_device(cfg.device)
    tf = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize([m / 255 for m in MEAN], [s / 255 for s in STD])])
    data = LocalCIFAR10(cfg.data_dir, train=True, transform=tf)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0)
    torch.manual_seed(cfg.seed)
    model = ConvNet(cfg.norm, cfg.width).to(device).train()
    opt = build_optimizer(model, cfg)

    def run(n: int) -> int:
        seen = 0
        for i, (x, y) in enumerate(loader):
            if i == n:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
        return seen

    run(5)  # warm-up: worker start, allocator
    sync(device)
    start = time.perf_counter()
    seen = run(steps)
    sync(device)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="directory holding cifar-10-batches-py")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per pipeline")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (baseline)")
    args = parser.parse_args()
    cfg = TrialConfig(optimizer="sgd", lr=0.05, l2=5e-4, norm="batch", batch_size=args.batch_size,
                      width=args.width, data_dir=args.data_dir, device=args.device)
    ours = l2bn_images_per_s(cfg, args.steps)
    base = conventional_images_per_s(cfg, args.steps, args.workers)
    device = resolve_device(cfg.device)
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch_size} "
          f"width={args.width} steps={args.steps}")
    print(f"conventional (torchvision + DataLoader, {args.workers} workers): {base:9.1f} images/s")
    print(f"l2bn (device tensor + on-device augmentation):        {ours:9.1f} images/s")
    print(f"ratio l2bn / conventional: {ours / base:.2f}x")


if __name__ == "__main__":
    main()
