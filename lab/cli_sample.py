"""``python -m lab sample RUN_DIR --prompt "red apple" --n 16 --cfg 3`` (or ``--class 3``): a PNG grid."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from lab.registry import ConfigError


def load_generator(run_dir: Path):
    import torch  # torch and the models load with the command, not at `python -m lab` start-up

    from lab.generator import GeneratorModule
    from lab.generator_run import _ckpt_in
    from lab.tokenizer import Tokenizer

    ckpt_path = _ckpt_in(run_dir)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    hp = ckpt.get("hyper_parameters", {})
    if "cfg" not in hp or hp["cfg"].get("stage") != "generator":
        raise ConfigError(f"{ckpt_path} is not a bitlab generator checkpoint.")
    cfg = hp["cfg"]
    tok = Tokenizer(quantizer=cfg["quantizer"], **cfg["tokenizer"])
    module = GeneratorModule(cfg, tok, num_classes=hp["num_classes"])
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise ConfigError(f"{ckpt_path} does not match its configuration: {str(e).splitlines()[0]}") from None
    return module.eval(), cfg


def cmd_sample(args: argparse.Namespace) -> None:
    import torch  # torch and the models load with the command, not at `python -m lab` start-up
    import torchvision

    from lab.generator_run import sample_opts
    from lab.sampling import sample_images

    run_dir = Path(args.run_dir)
    if not run_dir.exists():
        raise ConfigError(f"{run_dir} does not exist: give a generator run directory (runs/<NAME>/<run-id>) or checkpoint.")
    module, cfg = load_generator(run_dir)
    model = module.model
    kw = {}
    if model.cond_kind == "text":
        if not args.prompt:
            raise ConfigError("this generator is text-conditional: pass --prompt \"...\" (repeat it for several prompts)")
        from lab.text import encode_text

        s, m = encode_text([args.prompt[i % len(args.prompt)] for i in range(args.n)])
        kw["text"] = (s, m)
    elif model.cond_kind == "class":
        n_cls = model.num_classes
        if args.cls is not None and not 0 <= args.cls < n_cls:
            raise ConfigError(f"--class {args.cls} is out of range: this generator has classes 0..{n_cls - 1}.")
        kw["labels"] = torch.full((args.n,), args.cls) if args.cls is not None else torch.arange(args.n) % n_cls
    opts = sample_opts(cfg, seed=args.seed, **{k: v for k, v in (("cfg", args.cfg), ("temperature", args.temperature),
                                                                  ("top_p", args.top_p), ("top_k", args.top_k)) if v is not None})
    with torch.no_grad():
        imgs = sample_images(model, module.head, module.tokenizer, batch_size=args.n, opts=opts, **kw)
    out = Path(args.out) if args.out else (run_dir if run_dir.is_dir() else run_dir.parent) / "sample.png"
    torchvision.utils.save_image(imgs * 0.5 + 0.5, out, nrow=int(math.ceil(math.sqrt(args.n))), padding=1, pad_value=1.0)
    print(f"wrote {out}")


def register(sub) -> None:
    p = sub.add_parser("sample", help="sample a PNG grid from a trained generator")
    p.add_argument("run_dir", help="a generator run directory or checkpoint")
    p.add_argument("--prompt", action="append", default=None,
                   help="caption (text-conditional generators); repeat for several, the grid cycles through them")
    p.add_argument("--class", dest="cls", type=int, default=None, help="class index (class-conditional generators)")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--cfg", type=float, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", dest="top_p", type=float, default=None)
    p.add_argument("--top-k", dest="top_k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="PNG path (default RUN_DIR/sample.png)")
    p.set_defaults(func=cmd_sample)
