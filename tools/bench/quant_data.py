"""Data for the quantization benchmark: a small CNN trained on scikit-learn's digits, and zoo samples."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def digits_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits as float32 NCHW in [0, 1], split 80/20."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return x_train, y_train, x_test, y_test


def train_digits_cnn(out: Path, seconds: float = 8.0, seed: int = 0) -> Path:
    """Train a tiny CNN on digits for at most ``seconds`` and export it (opset 17, symbolic batch)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    x_train, y_train, _, _ = digits_data(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    xs, ys = torch.from_numpy(x_train), torch.from_numpy(y_train)
    began = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        for _epoch in range(40):
            order = torch.randperm(len(xs))
            for start in range(0, len(xs), 64):
                batch = order[start:start + 64]
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(xs[batch]), ys[batch])
                loss.backward()
                optimizer.step()
            if time.perf_counter() - began > seconds:
                break
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (xs[:2],), str(out), dynamo=False, opset_version=17, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=False)
    return out


def zoo_samples(name: str, size: str, count: int, offset: int) -> list[dict[str, np.ndarray]]:
    from tools.zoo import example_inputs

    return [example_inputs(name, size, seed=offset + i) for i in range(count)]
