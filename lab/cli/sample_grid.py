"""A captioned, upsampled PNG grid for ``python -m lab sample``, and the class names of a generator's data."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence


def class_names(cfg: Any) -> list[str]:
    """The class names of the data a generator was trained on (from the dataset cache; built if it is not there)."""
    from lab.data.datasets import ImageDataModule

    dm = ImageDataModule(dict(cfg["data"]), image_size=cfg["loader"]["image_size"])
    dm.setup()
    return list(dm.class_names)


def new_output_path(run_dir: Path, stem: str = "sample") -> Path:
    """``RUN_DIR/<stem>-NNN.png``, the first number not taken: a new file each time, never an older grid."""
    n = 1
    while (run_dir / f"{stem}-{n:03d}.png").exists():
        n += 1
    return run_dir / f"{stem}-{n:03d}.png"


def save_grid(imgs: Any, path: Path, captions: Sequence[str] | None = None, cell: int = 128) -> tuple[int, int]:
    """Images in [-1, 1] (N, 3, H, W) -> a PNG grid, each image upsampled (nearest: pixels stay visible) to about
    ``cell`` pixels, with its caption under it. -> the grid's (width, height)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    x = ((imgs.detach().float().clamp(-1, 1) * 0.5 + 0.5) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    n, h, w = x.shape[:3]
    scale = max(1, round(cell / max(h, w)))
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    font = ImageFont.load_default(size=max(10, cell // 11)) if captions else None
    cap_h = (font.size + 6) if font is not None else 0
    W, H, pad = w * scale, h * scale, 2
    canvas = Image.new("RGB", (cols * (W + pad) + pad, rows * (H + cap_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, c = divmod(i, cols)
        left, top = pad + c * (W + pad), pad + r * (H + cap_h + pad)
        canvas.paste(Image.fromarray(np.ascontiguousarray(x[i])).resize((W, H), Image.NEAREST), (left, top))
        if font is not None:
            text = str(captions[i])
            while text and draw.textlength(text, font=font) > W:  # shorten to the cell's width
                text = text[:-2] + "…" if len(text) > 1 else ""
            draw.text((left + (W - draw.textlength(text, font=font)) / 2, top + H + 2), text, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return canvas.size
