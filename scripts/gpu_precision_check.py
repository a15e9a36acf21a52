"""Issue 12 device check: what trainer.precision=auto resolves to on a CUDA GPU, and whether bf16 autocast is
actually faster than fp32 there for the generator ladder (a train step on random tokens: transformer + bitwise head)."""
import json, os, sys, time
import torch
sys.path.insert(0, os.getcwd())
from lab.runtime.machine import resolve_precision
from lab.models.transformer import Transformer, LADDER
from lab.models.heads import BitwiseHead

out = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "auto": resolve_precision("auto", "gpu"),
       "auto_accelerator_auto": resolve_precision("auto", "auto")}
print(out, flush=True)
rows = []
for scales, label in (((1, 2, 3, 4, 6, 8), "cpu-preset 130 tokens"), ((1, 2, 3, 4, 5, 6, 8, 10, 13, 16), "gpu-preset 680 tokens")):
    for size in ("xs", "s", "m", "l"):
        for B in (32, 128):
            torch.manual_seed(0)
            model = Transformer(latent_dim=32, scales=scales, num_classes=10, size=size).cuda()
            head = BitwiseHead(width=model.width if hasattr(model, "width") else LADDER[size][1], code_kind="bits", bits=16, vocab_size=2**16).cuda()
            params = list(model.parameters()) + list(head.parameters())
            opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
            L = model.L
            x = torch.randn(B, L - 1, 32, device="cuda")
            y = torch.randint(0, 2, (B, L, 16), device="cuda").float()
            labels = torch.randint(0, 10, (B,), device="cuda")
            res = {}
            for prec in ("fp32", "bf16", "fp32", "bf16"):
                def step():
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=prec == "bf16"):
                        h = model(x, model.condition(labels=labels))
                        loss = head.loss(h, y).mean()
                    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
                for _ in range(3): step()
                torch.cuda.synchronize(); t = time.perf_counter(); n = 0
                while time.perf_counter() - t < 0.5: step(); n += 1
                torch.cuda.synchronize(); ms = 1e3 * (time.perf_counter() - t) / n
                res[prec] = min(res.get(prec, 1e9), ms)
            row = dict(tokens=label, size=size, batch=B, fp32_ms=round(res["fp32"], 3), bf16_ms=round(res["bf16"], 3),
                       bf16_speedup=round(res["fp32"] / res["bf16"], 3))
            print(row, flush=True); rows.append(row)
out["rows"] = rows
os.makedirs(os.environ.get("OUT", "."), exist_ok=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "gpu_check.json"), "w"), indent=1)
