"""Evaluation: a tokenizer's final evaluation (``tokenizer.py``: PSNR / SSIM / LPIPS, rFID and rKID, per-scale
prefix PSNR and code statistics, the bicubic baseline) and F9's label-noise measurement (``label_noise.py``). It
sits above the models (it runs a tokenizer), beside the generation layer; the measures themselves are
``lab.metrics``."""
