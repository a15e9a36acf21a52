"""``python -m lab sample RUN_DIR --prompt "red apple" --n 16 --guidance 3`` (or ``--class 3``): a PNG grid."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lab.core.registry import ConfigError
from lab.cli.sample_grid import new_output_path, save_grid
from lab.config.runs import checkpoint_config, read_config
from lab.runtime.safety import check_sample_options, load_checkpoint


class _Guidance(argparse.Action):
    """--guidance, or its deprecated name --cfg: the value, and which name was typed (for the messages)."""
    def __call__(self, parser, namespace, values, option_string=None):
        namespace.guidance, namespace.guidance_flag = values, option_string


def cmd_sample(args: argparse.Namespace) -> None:
    import torch  # torch and the models load with the command, not at `python -m lab` start-up

    from lab.stages.generator import load_generator
    from lab.stages.generator_eval import sample_opts
    from lab.generation.sampling import sample_images

    if args.guidance_flag == "--cfg":
        print("note: --cfg is deprecated (removed in 0.2): it is --guidance now.", file=sys.stderr)
    check_sample_options(guidance=args.guidance, names={"guidance": args.guidance_flag}, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, n=args.n,
                         source="--")
    if not 1 <= args.size <= MAX_SIZE:
        raise ConfigError(f"--size={args.size} is out of range: the pixels per image in the grid must be an integer "
                          f"in [1, {MAX_SIZE}] (default 128).")
    if not 0 <= args.seed < 2**32:
        raise ConfigError(f"--seed={args.seed} is out of range: it must be an integer in [0, 2^32).")
    run_dir = Path(args.run_dir)
    if not run_dir.exists():
        raise ConfigError(f"{run_dir} does not exist: give a generator run directory (runs/<NAME>/<run-id>) or checkpoint.")
    if args.list_classes:  # from the run's config and data: the model is never built for ten names
        return list_classes(args, run_dir)
    module, cfg = load_generator(run_dir)
    model = module.model
    refuse_inapplicable(args, model.cond_kind)
    kw, captions = {}, None
    if model.cond_kind == "text":
        if not args.prompt:
            raise ConfigError("this generator is text-conditional: pass --prompt \"...\" (repeat it for several prompts)")
        from lab.models.text import encode_text

        captions = [args.prompt[i % len(args.prompt)] for i in range(args.n)]
        s, m = encode_text(captions)
        kw["text"] = (s, m)
    elif model.cond_kind == "class":
        n_cls = model.num_classes
        if args.cls is not None and not 0 <= args.cls < n_cls:
            raise ConfigError(f"--class {args.cls} is out of range: this generator has classes 0..{n_cls - 1}.")
        kw["labels"] = torch.full((args.n,), args.cls) if args.cls is not None else torch.arange(args.n) % n_cls
        captions = _class_captions(cfg, kw["labels"].tolist())
    opts = sample_opts(cfg, seed=args.seed, **{k: v for k, v in (("guidance", args.guidance), ("temperature", args.temperature),
                                                                  ("top_p", args.top_p), ("top_k", args.top_k)) if v is not None})
    with torch.no_grad():
        imgs = sample_images(model, module.head, module.tokenizer, batch_size=args.n, opts=opts, **kw)

    # a new file beside the run each time (never an earlier grid), unless --out names one
    out = Path(args.out) if args.out else new_output_path(run_dir if run_dir.is_dir() else run_dir.parent.parent)
    w, h = save_grid(imgs, out, captions=None if args.no_captions else captions, cell=args.size)
    print(f"wrote {out} ({args.n} images, {w}x{h} px)")


MAX_SIZE = 4096  # pixels per image in the grid


def run_config(run_dir: Path) -> dict:
    """A generator run's config without building its model: the run's config.yaml, else (a checkpoint outside a
    run directory) the checkpoint's hyper-parameters."""
    from lab.stages.generator import SAMPLE_FIX, checkpoint_in

    folder = run_dir if run_dir.is_dir() else run_dir.parent.parent
    if (folder / "config.yaml").is_file():
        cfg = read_config(folder / "config.yaml")
    else:
        path = checkpoint_in(run_dir, "", SAMPLE_FIX)
        try:
            cfg = checkpoint_config(load_checkpoint(path), path, "generator")
        except ConfigError as e:
            raise ConfigError(f"{e} {SAMPLE_FIX}") from None
    if cfg.get("stage") != "generator":
        raise ConfigError(f"{run_dir} is not a generator run (its config says stage: {cfg.get('stage')!r}). "
                          f"{SAMPLE_FIX}")
    return cfg


def list_classes(args: argparse.Namespace, run_dir: Path) -> None:
    """``--list-classes``: the class names of the generator's data (the dataset cache is read, or built)."""
    import inspect

    from lab.cli.sample_grid import class_names
    from lab.models.transformer import Transformer

    cfg = run_config(run_dir)
    cond = (cfg.get("generator") or {}).get("cond", inspect.signature(Transformer).parameters["cond"].default)
    refuse_inapplicable(args, cond)
    names = class_names(cfg)
    print("\n".join(f"{i:>4}  {n}" for i, n in enumerate(names)) if names else
          "the classes of this generator's data have no names: --class takes the class index (0, 1, ...)")


def refuse_inapplicable(args: argparse.Namespace, cond_kind: str) -> None:
    """A flag the generator cannot use is an error, not silently ignored."""
    what = {"text": "text-conditional (use --prompt)", "class": "class-conditional (use --class, --list-classes)",
            "none": "unconditional"}.get(cond_kind, cond_kind)
    if args.prompt and cond_kind != "text":
        raise ConfigError(f"--prompt does not apply: this generator is {what}.")
    if args.cls is not None and cond_kind != "class":
        raise ConfigError(f"--class does not apply: this generator is {what}.")
    if args.list_classes and cond_kind != "class":
        raise ConfigError(f"--list-classes does not apply: this generator is {what}; it has no classes.")


def _class_captions(cfg, labels: list[int]) -> list[str]:
    """Class names for the grid's captions (numbers when the data has none, or its cache cannot be read)."""
    from lab.data.sources import DataError
    from lab.cli.sample_grid import class_names

    try:
        names = class_names(cfg)
    except (DataError, OSError):
        names = []
    return [names[i] if i < len(names) else f"class {i}" for i in labels]


def register(sub) -> None:
    p = sub.add_parser("sample", help="sample a PNG grid from a trained generator",
                       description="Sample a grid of images from a trained generator run. Each image is upsampled "
                                   "(nearest) and captioned with its class name or prompt.")
    p.add_argument("run_dir", help="a generator run directory (runs/<NAME>/<run-id>) or one of its checkpoints")
    p.add_argument("--prompt", action="append", default=None,
                   help="caption (text-conditional generators); repeat for several, the grid cycles through them")
    p.add_argument("--class", dest="cls", type=int, default=None,
                   help="class index (class-conditional generators; default: classes 0, 1, 2, ... cycled); "
                        "see --list-classes")
    p.add_argument("--list-classes", dest="list_classes", action="store_true",
                   help="print the class indices and names of a class-conditional generator, and exit")
    p.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    p.add_argument("--guidance", "--cfg", type=float, default=None, action=_Guidance,
                   help="classifier-free guidance scale (default: the run's sample.guidance; 1 = no guidance). "
                        "--cfg is its deprecated name, kept until 0.2")
    p.set_defaults(guidance_flag="--guidance")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default: the run's sample.temperature; 0 = greedy)")
    p.add_argument("--top-p", dest="top_p", type=float, default=None,
                   help="nucleus sampling: keep the most likely outcomes up to this probability mass "
                        "(default: the run's sample.top_p; 1 = off)")
    p.add_argument("--top-k", dest="top_k", type=int, default=None,
                   help="keep only the k most likely outcomes (default: the run's sample.top_k; 0 = off)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same grid (default 0)")
    p.add_argument("--out", default=None,
                   help="PNG path (written even if it exists; default: a new RUN_DIR/sample-NNN.png)")
    p.add_argument("--size", type=int, default=128,
                   help="pixels per image in the grid, upsampled by nearest neighbour (default 128)")
    p.add_argument("--no-captions", dest="no_captions", action="store_true", help="no class names or prompts under the images")
    p.set_defaults(func=cmd_sample)
