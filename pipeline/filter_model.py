"""The image-type network shared by `train_filter` and `filter`: a small CNN over downscaled images.

Types follow the authors' annotation keys: d = dermatoscopic (`dsc`), m = close-up (`macro`), c = overview
(`clinic`). Runs on CUDA when present, else on the CPU.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .ingest import to_rgb
from .vocabulary import IMAGE_TYPES


class ImageTypeNet(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width),
                                      block(4 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * width, len(IMAGE_TYPES))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(batch))


def load_pixels(path: Path, size: int) -> np.ndarray:
    """An image as a (3, size, size) float32 array in [0, 1]; the whole frame squeezed, so borders stay visible."""
    with Image.open(path) as image:
        image.draft("RGB", (size * 2, size * 2))  # let libjpeg decode at reduced size: much faster on big files
        small = to_rgb(image).resize((size, size), Image.BILINEAR)
    return np.asarray(small, dtype=np.float32).transpose(2, 0, 1) / 255.0


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def save_model(model: ImageTypeNet, path: Path, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": meta}, path)


def load_model(path: Path, device: torch.device) -> tuple[ImageTypeNet, dict]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    meta = checkpoint["meta"]
    model = ImageTypeNet(meta["width"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), meta


@torch.no_grad()
def predict_probabilities(model: ImageTypeNet, pixels: np.ndarray, device: torch.device,
                          batch_size: int = 256) -> np.ndarray:
    outputs = []
    for start in range(0, len(pixels), batch_size):
        batch = torch.from_numpy(pixels[start:start + batch_size]).to(device)
        outputs.append(torch.softmax(model(batch).float(), dim=1).cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, len(IMAGE_TYPES)), dtype=np.float32)
