"""The image-type network shared by `train_filter` and `filter`, and how images reach it.

Types follow the authors' annotation keys: d = dermatoscopic (`dsc`), m = close-up (`macro`), c = overview
(`clinic`). The network is a small ResNet (basic residual blocks, batch norm, four stages) trained from scratch:
no downloadable weights exist here.

Every image reaches the network the same way in training and inference: JPEG draft-mode decoding (libjpeg scales
down while decoding), converted to RGB, the whole frame squeezed to a square (borders and corners stay visible, so
the training augmentations, not the preprocessing, must teach the network to ignore them), uint8 until it is on
the device.

Devices: `auto` picks CUDA when present, else the CPU; `cuda` without CUDA is an error. Inference runs in float32
with TF32 off on every device, so a GPU's probabilities stay within float round-off of the CPU's; mixed precision
(bfloat16 autocast) is used only for training on CUDA.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageFont
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .annotations import ANNOTATION_KEYS, IMAGE_TYPES  # noqa: F401  (re-exported for older imports)
from .common import PipelineError, atomic_write_bytes
from .imaging import to_rgb
from .pinned_cpu import pin_environment


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

    def fold_batchnorm(self) -> None:
        self.conv1, self.bn1 = fuse_conv_bn_eval(self.conv1, self.bn1), nn.Identity()
        self.conv2, self.bn2 = fuse_conv_bn_eval(self.conv2, self.bn2), nn.Identity()
        if isinstance(self.shortcut, nn.Sequential):
            self.shortcut = fuse_conv_bn_eval(self.shortcut[0], self.shortcut[1])


class ImageTypeNet(nn.Module):
    """ResNet-style: a strided stem, four stages of `blocks` basic blocks (widths w, 2w, 4w, 8w; each later stage
    halves the resolution), global average pooling, dropout, a linear head. Input: uint8 or float images in
    [0, 255], shape (N, 3, S, S)."""

    def __init__(self, width: int = 16, blocks: int = 1, dropout: float = 0.2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            for block in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if stage and not block else 1))
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(cin, len(IMAGE_TYPES)))
        # NHWC: the CPU's convolutions run about a quarter faster in training, a tenth in inference, than NCHW
        self.to(memory_format=torch.channels_last)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = ((batch.float() - 127.5) / 64.0).contiguous(memory_format=torch.channels_last)
        return self.head(self.stages(self.stem(x)))

    def fold_batchnorm(self) -> "ImageTypeNet":
        """For inference only: each batch norm folded into the convolution before it (eval mode: a fixed affine
        map), which saves its pass over the activations, a fifth of the network's time on the CPU."""
        self.eval()
        self.stem = nn.Sequential(fuse_conv_bn_eval(self.stem[0], self.stem[1]), self.stem[2])
        for block in self.stages:
            block.fold_batchnorm()
        return self


def open_rgb(path: Path, draft_size: int) -> Image.Image:
    """Decode an image as RGB; JPEGs in draft mode at no less than `draft_size` on the short side."""
    with Image.open(path) as image:
        image.draft("RGB", (draft_size, draft_size))
        return to_rgb(image)


def draft_side(size: int) -> int:
    """The short side a JPEG is decoded at for a `size` input: 7/8 of it, so a 4:3 frame is decoded at the DCT
    scale just above the input (600x450 at 1/4 for 128 px, at 1/8 for 64 px) instead of the next larger one, which
    costs two to three times the decoding for detail the squeeze to `size` throws away."""
    return max(1, size * 7 // 8)


def load_pixels(path: Path, size: int) -> np.ndarray:
    """An image as a (3, size, size) uint8 array: the whole frame squeezed, so borders stay visible."""
    return frame_pixels(open_rgb(path, draft_side(size)), size)


def frame_pixels(image: Image.Image, size: int) -> np.ndarray:
    small = image.resize((size, size), Image.BILINEAR)
    return np.ascontiguousarray(np.asarray(small, dtype=np.uint8).transpose(2, 0, 1))


# ---- training augmentations: break the shortcuts a from-scratch network would otherwise learn ----------------

def _corner_box(rng: np.random.Generator, width: int, height: int, fraction: tuple[float, float]):
    w = int(width * rng.uniform(*fraction))
    h = int(height * rng.uniform(*fraction))
    corner = rng.integers(4)
    x0 = 0 if corner in (0, 3) else width - w
    y0 = 0 if corner in (0, 1) else height - h
    return x0, y0, x0 + w, y0 + h


def _random_text(rng: np.random.Generator) -> str:
    return "".join(chr(int(c)) for c in rng.integers(65, 91, int(rng.integers(4, 14))))


def _watermark(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A photo library's watermark, as DermNet's: half-transparent light text lines and a round emblem, mostly in
    the lower left, at the scale of the frame. Put on images of every type, so a watermark says nothing of one."""
    width, height = image.size
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    grey = int(rng.integers(200, 256)) if rng.random() < 0.8 else int(rng.integers(0, 256))
    alpha = int(rng.integers(120, 256))
    if rng.random() < 0.7:  # DermNet's place: the lower left
        x0, y0 = int(width * rng.uniform(0.01, 0.08)), int(height * rng.uniform(0.6, 0.85))
    else:
        x0, y0 = int(width * rng.uniform(0, 0.7)), int(height * rng.uniform(0, 0.85))
    scale = max(6, int(height * rng.uniform(0.03, 0.08)))
    if rng.random() < 0.6:  # the emblem: a ring with a figure
        r = int(scale * rng.uniform(0.8, 1.6))
        draw.ellipse((x0, y0 - 2 * r, x0 + 2 * r, y0), outline=(grey, grey, grey, alpha), width=max(1, r // 5))
        draw.line((x0 + r, y0 - 2 * r + 3, x0 + r, y0 - 3), fill=(grey, grey, grey, alpha), width=max(1, r // 4))
    font = _FONTS.get(scale)
    if font is None:
        try:
            font = ImageFont.load_default(size=scale)
        except TypeError:  # Pillow < 10.1: one bitmap size
            font = ImageFont.load_default()
        _FONTS[scale] = font
    for line in range(int(rng.integers(1, 3))):
        draw.text((x0, y0 + 2 + int(1.2 * scale * line)), _random_text(rng), fill=(grey, grey, grey, alpha),
                  font=font)
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


_FONTS: dict = {}


def augment(image: Image.Image, size: int, rng: np.random.Generator) -> np.ndarray:
    """One random view of an RGB image as a (3, size, size) uint8 array, breaking the shortcuts a from-scratch
    network would otherwise learn. Watermarks (DermNet's, lower left) go on images of every type, and the lower
    part of the frame is sometimes cut away, so neither a mark nor its absence tells the type. Slide mounts and
    letterboxing: random borders. Resolution and aspect (one collection squashed to 256x256, another at 1024 px):
    random downscaling and squeezing. Orientation: flips and quarter turns. Framing: random resized crops. Cameras
    and compression: colour jitter and JPEG re-encoding. Only exactly rounded arithmetic (no exp or log), so the
    views are the same on every CPU."""
    image = image.copy()
    width, height = image.size
    if rng.random() < 0.5:
        image = _watermark(image, rng)
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.2:  # a mark of another kind in a random corner: a box, a ruler-like bar
        x0, y0, x1, y1 = _corner_box(rng, width, height, (0.1, 0.35))
        shade = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.rectangle((x0, y0, x1, y1), outline=shade, width=int(rng.integers(1, 4)))
    if rng.random() < 0.2:  # a corner erased
        shade = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.rectangle(_corner_box(rng, width, height, (0.15, 0.4)), fill=shade)
    if rng.random() < 0.25:  # the lower part of the frame cut away (where a watermark would sit)
        image = image.crop((0, 0, width, int(height * rng.uniform(0.55, 0.85))))
        width, height = image.size
    if rng.random() < 0.25:  # a border: slide mount, letterbox, scanner bed
        shade = int(rng.choice([0, 0, 255, int(rng.integers(0, 256))]))
        sides = rng.uniform(0, 0.15, 4) * (rng.random(4) < 0.7)
        left, top, right, bottom = (int(sides[0] * width), int(sides[1] * height), int(sides[2] * width),
                                    int(sides[3] * height))
        framed = Image.new("RGB", (width + left + right, height + top + bottom), (shade,) * 3)
        framed.paste(image, (left, top))
        image, (width, height) = framed, framed.size
    # random resized crop: 35-100 % of the area, aspect 3:4 to 4:3
    for _ in range(10):
        area = width * height * rng.uniform(0.35, 1.0)
        ratio = rng.uniform(0.75, 4 / 3)
        w, h = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if 0 < w <= width and 0 < h <= height:
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            break
    else:
        x, y, w, h = 0, 0, width, height
    if rng.random() < 0.3:  # a low-resolution device or a thumbnail: down to 24-60 px, then to the input size
        small = int(rng.integers(24, 61))
        image = image.resize((small, max(8, int(small * h / w))), Image.BILINEAR, box=(x, y, x + w, y + h))
        image = image.resize((size, size), Image.BILINEAR)
    else:
        image = image.resize((size, size), Image.BILINEAR, box=(x, y, x + w, y + h))
    if rng.random() < 0.8:  # colour jitter
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.3))
        image = ImageEnhance.Color(image).enhance(rng.uniform(0.6, 1.4))
    if rng.random() < 0.5:  # JPEG re-encoding at a random quality
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(25, 96)))
        buffer.seek(0)
        image = Image.open(buffer).convert("RGB")
    array = np.asarray(image, dtype=np.uint8)
    if rng.random() < 0.5:
        array = array[:, ::-1]
    if rng.random() < 0.5:
        array = array[::-1]
    array = np.rot90(array, int(rng.integers(4)))
    if rng.random() < 0.3:  # per-channel gain: white balance
        array = np.clip(array * rng.uniform(0.9, 1.1, 3), 0, 255).astype(np.uint8)
    if rng.random() < 0.25:  # random erasing anywhere
        h, w = int(size * rng.uniform(0.1, 0.4)), int(size * rng.uniform(0.1, 0.4))
        y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        array = array.copy()
        array[y:y + h, x:x + w] = rng.integers(0, 256, 3, dtype=np.uint8)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


# ---- devices, saving, loading --------------------------------------------------------------------------------

def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("filter.device is cuda, but no CUDA device is available (use auto or cpu)")
    if name not in ("cpu", "cuda"):
        raise PipelineError(f"filter.device {name!r} is not one of auto, cpu, cuda")
    return torch.device(name)


# Training on the CPU gives the same model file byte for byte on any x86-64 machine with AVX2 (Intel or AMD, AVX2 or
# AVX-512), because every library that picks its kernels by the CPU it finds is pinned to one choice:
# - ATen's own kernels (batch norm, ReLU, softmax, the optimiser's arithmetic) to its AVX2 build, whatever the CPU
#   offers beyond it (its capability is read at the first operation, so setting it after `import torch` works);
# - oneDNN and NNPACK, whose convolutions JIT or dispatch by ISA and cache size, switched off: convolutions then run
#   as im2col + MKL GEMM;
# - MKL's GEMM in its conditional-numerical-reproducibility mode COMPATIBLE (also read at its first call), the same
#   code path on every Intel and AMD processor;
# - one compute thread (a reduction split over threads sums in another order).
# tests/test_filter_numerics.py trains under every dispatch cap the libraries have (ATen default/avx2/avx512, MKL
# SSE4.2/AVX2/AVX-512, oneDNN AVX2, NumPy without AVX-512) and checks the bytes are the same.
def pin_cpu_numerics() -> None:
    """Make this process's CPU arithmetic machine-independent (see the comment above); call before the first
    torch operation. Raises when it is too late (torch already dispatched under another capability)."""
    pin_environment()
    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)
    torch.set_num_threads(1)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX2":
        raise PipelineError(f"the CPU's arithmetic could not be pinned to AVX2 (torch runs {capability}): this CPU "
                            f"lacks AVX2, or torch ran an operation before pin_cpu_numerics()")


@contextlib.contextmanager
def pinned_cpu_numerics():
    """`pin_cpu_numerics` for the time of a `with` block: the thread count and the oneDNN and NNPACK switches are
    given back afterwards (a test or a notebook that trains or scores goes on as before)."""
    threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    nnpack = torch.backends.nnpack.set_flags(False)[0]
    pin_cpu_numerics()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = mkldnn
        torch.backends.nnpack.set_flags(nnpack)


def exact_float32(device: torch.device) -> None:
    """No TF32 on CUDA: keeps a GPU's float32 results within round-off of the CPU's."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def save_model(model: ImageTypeNet, path: Path, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "meta": meta}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def model_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_model(path: Path, device: torch.device, fold: bool = True) -> tuple[ImageTypeNet, dict]:
    """The network in eval mode; `fold` (for inference) folds its batch norms, and such a model is not saved."""
    if not Path(path).exists():
        raise PipelineError(f"{path}: model not found; run `ham train-filter` (or `dvc repro`) first")
    return model_from_bytes(Path(path).read_bytes(), device, fold)


def model_from_bytes(data: bytes, device: torch.device, fold: bool = True) -> tuple[ImageTypeNet, dict]:
    """A saved model file's bytes -> the network (as `load_model`) and its meta: the one way every scoring path,
    local or on a cluster's worker, builds the network, so they compute the same floats."""
    checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    meta = checkpoint["meta"]
    model = ImageTypeNet(meta["width"], meta.get("blocks", 1))
    model.load_state_dict(checkpoint["state_dict"])
    model.temperature = float(meta.get("temperature", 1.0))
    return (model.fold_batchnorm() if fold else model.eval()).to(device), meta


@torch.inference_mode()
def predict_batch(model: ImageTypeNet, batch: torch.Tensor, device: torch.device) -> np.ndarray:
    """Softmax probabilities (float32, shape (N, 3)) of a uint8 batch; float32 on every device. On the CPU the
    batch goes through in slices of 32, whose activations stay in the cache (about a quarter faster than 256 at
    once); a GPU takes it whole."""
    batch = batch.to(device, non_blocking=True)
    step = len(batch) if device.type == "cuda" else 32
    logits = torch.cat([model(batch[i:i + step]) for i in range(0, len(batch), step)]) if len(batch) else model(batch)
    return torch.softmax(logits.float() / getattr(model, "temperature", 1.0), dim=1).cpu().numpy()
