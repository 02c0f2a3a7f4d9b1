"""Train the default `digits` model on scikit-learn's digits and export it to the model repository.

    python examples/train_digits.py [--out deploy/model_repository/digits/1/model.pt2]

Input `input` FP32 [-1, 64] (8x8 grey levels 0..16, as scikit-learn gives them); output `output` FP32 [-1, 10]
(logits). The held-out split is `train_test_split(test_size=0.25, random_state=0)`, the same the tests use.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


class DigitsNet(torch.nn.Module):
    """A small MLP that scales grey levels 0..16 to 0..1 itself, so clients send raw pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(64, 128),
            torch.nn.ReLU(),
            torch.nn.Linear(128, 64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x / 16.0)


def held_out_split():
    """Return (x_train, x_test, y_train, y_test) as numpy arrays."""
    digits = load_digits()
    return train_test_split(digits.data.astype("float32"), digits.target, test_size=0.25, random_state=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent.parent / "deploy/model_repository/digits/1/model.pt2",
    )
    parser.add_argument("--epochs", type=int, default=300)
    args = parser.parse_args()
    torch.manual_seed(0)
    x_train, x_test, y_train, y_test = held_out_split()
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    model = DigitsNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(args.epochs):
        for idx in torch.randperm(len(x)).split(64):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    print(f"held-out accuracy: {accuracy:.4f} on {len(y_test)} samples")
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (x[:2],), dynamic_shapes=({0: batch},))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, args.out)
    print(f"exported to {args.out}")


if __name__ == "__main__":
    main()
