"""Train one embedded denoiser in the shipped VAE's latent space, conditioned on MiniLM token states.

unet: comfy.model_base.BaseModel (UNetModel), eps prediction on ComfyUI's default SD discrete schedule
      (x_t = x0 + sigma*eps, loss on eps).
flux: comfy.model_base.Flux (MMDiT), rectified flow (x_t = (1-s)*x0 + s*eps, loss on eps - x0, s logit-normal,
      or with --uniform-frac a share of uniform s, which trains the low-noise steps that draw the shapes' edges).
The loss goes through model.apply_model, i.e. ComfyUI's own model_sampling input/timestep/denoised maths.
Captions are dropped (replaced by the empty prompt's encoding) 10% of the time so CFG works.
Saves EMA weights as fp16 safetensors with the spec (architecture + sampler defaults) in the metadata.
    OMP_NUM_THREADS=1 python -m embedded.train_denoiser --model unet
"""
import argparse
import json
import math
import time

import torch

from . import comfy_env

comfy_env.setup()
from safetensors.torch import save_file  # noqa: E402

from . import dataset, denoiser_specs, loader, paths, text_encoder, train_data  # noqa: E402


def _clone_saved(t):
    return t if isinstance(t, torch.nn.Parameter) else t.clone()


def zero_init_outputs_(diffusion_model, kind):
    """Zero the output projection (and Flux's adaLN modulation) so training starts from a no-op residual."""
    with torch.no_grad():
        for name, p in diffusion_model.named_parameters():
            if kind == "unet" and name.startswith("out.2."):
                p.zero_()
            if kind == "flux" and (name.startswith("final_layer.linear.") or ".modulation." in name
                                   or name.startswith("final_layer.adaLN_modulation.")):
                p.zero_()


def repatch(state_dict, net):
    """Adapt a Flux state dict trained with 2x2 patches to net's 1x1 patches (warm start): the input embedding
    sums over a patch's 4 pixels (same response to a constant patch), the output layer averages them."""
    own = net.state_dict()
    out = dict(state_dict)
    for key in ("img_in.weight", "final_layer.linear.weight", "final_layer.linear.bias"):
        old, new = state_dict[key], own[key]
        if old.shape == new.shape:
            continue
        if key == "img_in.weight":  # [hidden, c*ph*pw] -> [hidden, c]
            out[key] = old.reshape(old.shape[0], new.shape[1], -1).sum(-1)
        else:  # [(c ph pw), ...] -> [c, ...]
            out[key] = old.reshape(new.shape[0], -1, *old.shape[1:]).mean(1)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["unet", "flux"], required=True)
    ap.add_argument("--steps", type=int, default=None, help="default: 1500 (unet) / 1500 (flux)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--n-data", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--drop", type=float, default=0.1)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--out", default=None)
    ap.add_argument("--vae", default=None, help="autoencoder whose latents to train on (default: the shipped one)")
    ap.add_argument("--init", default=None, help="continue from saved (EMA) weights of the same spec (a Flux "
                    "trained with 2x2 patches is adapted to 1x1 patches)")
    ap.add_argument("--data-version", type=int, default=dataset.DATA_VERSION, choices=sorted(dataset.RADII))
    ap.add_argument("--patch-size", type=int, default=None, help="flux only: override the spec's patch size")
    ap.add_argument("--uniform-frac", type=float, default=0.0,
                    help="flux only: share of the batch with s ~ uniform(0,1) instead of logit-normal")
    comfy_env.add_threads_argument(ap)
    args = ap.parse_args()
    if not 0.0 <= args.uniform_frac <= 1.0 or (args.uniform_frac and args.model != "flux"):
        ap.error("--uniform-frac must lie in [0, 1] and is for --model flux only")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    spec = json.loads(json.dumps(denoiser_specs.SPECS[args.model]))
    if args.patch_size:
        spec["config"]["patch_size"] = args.patch_size
    steps = args.steps or 1500
    out_path = args.out or (paths.UNET if args.model == "unet" else paths.FLUX)
    t0 = time.time()

    vae_path = args.vae or paths.AUTOENCODER
    data = train_data.build(loader.load_vae(vae_path), text_encoder.build_clip(), n=args.n_data,
                            tag=train_data.file_tag(vae_path), version=args.data_version)
    lat, cap_idx, conds, pooled = data["latents"], data["cap_idx"], data["conds"], data["pooled"]
    print(f"data ready {time.time() - t0:.0f}s: {len(lat)} latents, {len(conds)} captions", flush=True)

    patcher = loader.build_denoiser(spec, seed=args.seed)
    model = patcher.model
    net = model.diffusion_model
    zero_init_outputs_(net, args.model)
    if args.init:
        from safetensors.torch import load_file
        init = {k: v.float() for k, v in load_file(args.init).items()}
        net.load_state_dict(repatch(init, net) if args.model == "flux" else init)
        print(f"initialised from {args.init}", flush=True)
    ms = model.model_sampling
    n_params = sum(p.numel() for p in net.parameters())
    print(f"{args.model}: {n_params / 1e6:.2f}M params", flush=True)
    ema = {k: v.detach().clone() for k, v in net.state_dict().items()}
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    warm = 100
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))

    def save(path, step):
        sd = {k: v.to(torch.float16).contiguous() for k, v in ema.items()}
        meta = {"spec": json.dumps(spec), "steps": str(step), "seed": str(args.seed)}
        save_file(sd, path, metadata=meta)

    running = None
    for step in range(steps):
        idx = torch.randint(0, len(lat), (args.batch,), generator=gen)
        x0 = lat[idx]
        ci = cap_idx[idx].clone()
        ci[torch.rand(args.batch, generator=gen) < args.drop] = 0  # index 0 is the empty prompt
        cond = conds[ci]
        noise = torch.randn(x0.shape, generator=gen)
        if args.model == "unet":
            t = torch.randint(0, len(ms.sigmas), (args.batch,), generator=gen)
            sigma = ms.sigmas[t].float()
            s4 = sigma.view(-1, 1, 1, 1)
            x = x0 + s4 * noise
            den = model.apply_model(x, sigma, c_crossattn=cond)
            loss = torch.nn.functional.mse_loss((x - den) / s4, noise)
        else:
            sigma = torch.sigmoid(torch.randn(args.batch, generator=gen))
            if args.uniform_frac > 0:  # (no extra draws otherwise: earlier stages stay reproducible)
                uniform = torch.rand(args.batch, generator=gen) < args.uniform_frac
                sigma = torch.where(uniform, torch.rand(args.batch, generator=gen), sigma)
            sigma = sigma.clamp(1e-3, 1 - 1e-3)
            sigma = ms.sigma(ms.timestep(sigma))  # identity for shift 1; keeps the model's own sigma maths
            s4 = sigma.view(-1, 1, 1, 1)
            x = (1 - s4) * x0 + s4 * noise
            # Flux blocks add residuals in place; cloning saved activations keeps autograd exact.
            with torch.autograd.graph.saved_tensors_hooks(_clone_saved, lambda t: t):
                den = model.apply_model(x, sigma, c_crossattn=cond, y=pooled[ci])
            loss = torch.nn.functional.mse_loss((x - den) / s4, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            d = min(args.ema, (step + 1) / (step + 10))
            for k, v in net.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
                else:
                    ema[k].copy_(v)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step} loss {running:.4f} lr {sched.get_last_lr()[0]:.2e} t {time.time() - t0:.0f}s", flush=True)
        if (step + 1) % args.save_every == 0 and step + 1 < steps:
            save(out_path, step + 1)
    save(out_path, steps)
    print(f"saved {out_path} after {steps} steps; total {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
