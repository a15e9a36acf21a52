"""The generator's final evaluation, the numbers that go into its ``metrics.json``: validation loss and token / bit
accuracy per scale, teacher-forced and free-running (``free_running_accuracy``), F9's label-noise measurement of
its tokenizer (``lab.evaluation.label_noise``), and gFID / KID with their floor and ceiling (``gfid``,
``lab.metrics.fid_protocol``). ``sample_opts``: a run's sampling options, for these and for the sample command.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from lab.config import sections
from lab.evaluation.label_noise import label_noise_sensitivity
from lab.generation.correction import NoCorrection
from lab.generation.sampling import SampleOptions, make_cond, sample_images
from lab.metrics import fid_protocol as P
from lab.runtime.progress import Progress, phase
from lab.train.generator import GeneratorModule


def sample_opts(config: Any, **kw) -> SampleOptions:
    """The run's ``sample:`` options, with keyword overrides (``guidance=3.0``, ``seed=1``, ...)."""
    return SampleOptions.of(sections(config).sample, **kw)


@torch.no_grad()
def free_running_accuracy(module: GeneratorModule, batch: dict) -> list[float]:
    """Per scale: greedy predictions made on the model's *own* earlier scales, scored against the codes that
    re-quantizing the real image's residual ``f - f_hat_own`` gives (what a perfect corrector would emit)."""
    model, head, msq = module.model, module.head, module.tokenizer.msq
    f = module.batch_features(batch, "validation")
    B = f.shape[0]
    cond = make_cond(model, labels=batch["label"].to(module.device), text=module.batch_text(batch, "validation"), batch_size=B, guided=False)
    cache, f_hat, start, acc = model.new_cache(), torch.zeros_like(f), 0, []
    if model.order != "scale":
        return []
    for k, s in enumerate(msq.scales):
        x = None if k == 0 else msq.down(f_hat, s).flatten(2).transpose(1, 2)
        h = model.step(x, cond, cache, start, s * s)
        logits = head(h)
        start += s * s
        target, _ = msq.quantize_scale(f, f_hat, k)
        target = target.flatten(1, 2)
        acc.append(float(head.bit_agreement(logits, target).mean()))
        pred = head.sample(h, guide=None, temperature=0, top_k=0, top_p=1.0, generator=None)
        f_hat = f_hat + msq.contribution(msq.scale_latent(pred.reshape(B, s, s, *pred.shape[2:])), k)
    return acc


@torch.no_grad()
def evaluate_generator(module: GeneratorModule, dm, cfg: Any) -> dict:
    t_eval = time.time()
    module.eval()
    K = len(module.tokenizer.scales)
    ev = cfg["eval"]
    tot = {"loss": 0.0, "tok": 0.0, "bit": 0.0}
    ps_loss, ps_tf, ps_fr = [0.0] * K, [0.0] * K, [0.0] * K
    n = 0
    for i, batch in enumerate(dm.ordered_loader("validation")):
        if i >= ev["batches"]:
            break
        batch = {k: (v.to(module.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        tok_loss, logits, labels = module.losses(batch, "validation", NoCorrection(), None)
        tot["loss"] += float(tok_loss.mean())
        tot["tok"] += float(module.head.correct(logits, labels).mean())
        bits = module.head.bit_agreement(logits, labels)
        tot["bit"] += float(bits.mean())
        for k, (l, a) in enumerate(zip(module.per_scale(tok_loss), module.per_scale(bits))):
            ps_loss[k] += float(l)
            ps_tf[k] += float(a)
        for k, a in enumerate(free_running_accuracy(module, batch)):
            ps_fr[k] += a
        n += 1
    m: dict[str, Any] = {"val_loss": tot["loss"] / n, "token_accuracy": tot["tok"] / n, "bit_accuracy": tot["bit"] / n}
    per = {"scale": module.tokenizer.scales, "val_loss": [v / n for v in ps_loss], "accuracy_teacher_forced": [v / n for v in ps_tf]}
    if module.model.order == "scale":
        per["accuracy_free_running"] = [v / n for v in ps_fr]
        per["accuracy_gap"] = [a - b for a, b in zip(per["accuracy_teacher_forced"], per["accuracy_free_running"])]
    m["per_scale"] = per
    if ev["label_noise"]:
        f = module.features.get("validation")
        if f is None:
            f = torch.cat([module.tokenizer.encode(b["image"].to(module.device)) for b in dm.ordered_loader("validation")])
        m["label_noise"] = label_noise_sensitivity(module.tokenizer.msq, f[:512].to(module.device), ev["label_noise"])
    if ev["fid_samples"] > 0:
        m.update(gfid(module, dm, cfg, ev["fid_samples"]))
        m["sample_images_per_s"] = m["fid_samples"] / max(m["sampling_time_s"], 1e-9)
    m["eval_time_s"] = time.time() - t_eval
    return m


@torch.no_grad()
def gfid(module: GeneratorModule, dm, cfg: Any, n: int) -> dict:
    """gFID and KID of ``n`` generated images, conditioned on the first ``n`` validation images' labels/captions,
    against the Inception features of the training split (``eval.fid_reference_limit``: a seeded subset), with
    the floor (those ``n`` real validation images) and the ceiling (``n`` images decoded from random codes) of
    ``lab.metrics.fid_protocol``. -> metrics.json entries, ``fid_samples`` and ``sampling_time_s`` (sampling and decoding
    only) included."""
    settings = sections(cfg)  # once: the sampling options of every batch below come from it
    opts = P.options(settings.eval)
    kid_kw = {"kid_subsets": opts["kid_subsets"], "kid_subset_size": opts["kid_subset_size"]}
    device = module.device
    phase(f"evaluating: gFID / KID of {n:,} generated images against the training split's reference"
          + (f" ({opts['fid_reference_limit']:,} images)" if opts["fid_reference_limit"] else ""))
    ref, ref_info = P.reference(dm.splits["train"].images, split="train", data=str(cfg["data"]["name"]),
                                limit=opts["fid_reference_limit"], device=device)
    extractor = P.InceptionFeatures().to(device)
    feats, seen, gen_time, inc_time = [], 0, 0.0, 0.0
    progress = Progress("evaluating: generating images and their Inception features for gFID / KID", n)
    for i, batch in enumerate(dm.ordered_loader("validation")):
        if seen >= n:
            break
        take = min(batch["image"].shape[0], n - seen)
        b = {k: (v[:take].to(device) if torch.is_tensor(v) else v[:take]) for k, v in batch.items()}
        cond = {}
        if module.model.cond_kind == "class":
            cond["labels"] = b["label"]
        elif module.model.cond_kind == "text":
            cond["text"] = module.batch_text(b, "validation")
        t0 = time.perf_counter()
        imgs = sample_images(module.model, module.head, module.tokenizer, batch_size=take, opts=SampleOptions.of(settings.sample, seed=i), **cond)
        t1 = time.perf_counter()
        feats.append(extractor(imgs).cpu())  # one batch of generated images through Inception at a time
        gen_time, inc_time = gen_time + t1 - t0, inc_time + time.perf_counter() - t1
        seen += take
        progress.update(take)
    progress.close()
    phase(f"evaluating: the floor ({seen:,} real validation images) and the ceiling ({seen:,} random-code images), "
          "each cached once per data set and tokenizer")
    fake = P.FeatureSet(torch.cat(feats), "generated")
    floor = P.cached_score(P.prefix_features(dm.splits["validation"].images, seen, device=device,
                                             what=f"the floor: {seen} validation images"), ref, **kid_kw)
    rand = P.random_code_images(module.tokenizer, seen, device=device)
    ceiling = P.cached_score(P.features_of(rand, device=device, what=f"the ceiling: {seen} random-code images"),
                             ref, **kid_kw)
    m = P.protocol_metrics("gfid", "kid", P.score(fake, ref, **kid_kw), ref_info, floor=floor, ceiling=ceiling,
                           kid_subsets=opts["kid_subsets"])
    m.update(fid_samples=seen, sampling_time_s=gen_time, inception_time_s=inc_time)
    return m
