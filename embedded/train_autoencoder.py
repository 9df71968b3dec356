"""Train the domain autoencoder in ComfyUI's TAESD format (64x64 RGB -> 8x8x4 latent).

Uses ComfyUI's own comfy.taesd.taesd.Encoder/Decoder as the architecture; saves fp16 safetensors with keys
taesd_encoder.* / taesd_decoder.* / vae_scale / vae_shift, so stock comfy.sd.VAE (VAELoader) loads it.
The encoder sees pixels in [0,1] and the decoder predicts [0,1] (that is how TAESD.encode/decode wrap them).
vae_scale/vae_shift are set after training so that VAEEncode latents have zero mean and unit std.

Most steps train on 32x32 crops aligned to the 8-pixel latent grid (4x cheaper, same convolutions),
then a short phase on full 64x64 images.
    OMP_NUM_THREADS=1 python -m embedded.train_autoencoder
"""
import argparse
import math
import time

import torch

from . import comfy_env

comfy_env.setup()
import comfy.taesd.taesd as taesd  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from . import dataset, paths  # noqa: E402


def init_conv_(module, seed):
    """PyTorch-default init for every conv (ComfyUI's ops skip it); last conv of each residual branch scaled down."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            fan_in = m.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            with torch.no_grad():
                m.weight.copy_((torch.rand(m.weight.shape, generator=gen) * 2 - 1) * bound * math.sqrt(6.0) / math.sqrt(2.0))
                if m.bias is not None:
                    m.bias.zero_()
        if isinstance(m, taesd.Block):
            with torch.no_grad():
                m.conv[-1].weight.mul_(0.3)


def psnr(a, b):
    mse = ((a.clamp(0, 1) - b) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean().item()


def random_crops(x, gen, crop=32, grid=8):
    n, _, h, w = x.shape
    ys = torch.randint(0, (h - crop) // grid + 1, (n,), generator=gen) * grid
    xs = torch.randint(0, (w - crop) // grid + 1, (n,), generator=gen) * grid
    return torch.stack([x[i, :, ys[i]:ys[i] + crop, xs[i]:xs[i] + crop] for i in range(n)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crop-steps", type=int, default=1600)
    ap.add_argument("--full-steps", type=int, default=250)
    ap.add_argument("--crop-batch", type=int, default=16)
    ap.add_argument("--full-batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n-train", type=int, default=12000)
    ap.add_argument("--latent-reg", type=float, default=1e-4)
    ap.add_argument("--init", default=None, help="continue from a saved autoencoder (fine-tuning stage)")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--freeze-encoder", action="store_true",
                    help="train the decoder only (keeps the latent space, and so the trained denoisers, valid)")
    ap.add_argument("--latent-noise", type=float, default=0.0,
                    help="decoder sees z + U(0, this) * std(z) * noise on half of each batch (robust decoding)")
    ap.add_argument("--out", default=paths.AUTOENCODER)
    ap.add_argument("--data-version", type=int, default=dataset.DATA_VERSION, choices=sorted(dataset.RADII))
    comfy_env.add_threads_argument(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    t0 = time.time()
    imgs, _, _ = dataset.make_dataset(args.n_train, seed=args.seed + 100, held_out=False, version=args.data_version)
    val, _, _ = dataset.make_dataset(64, seed=args.seed + 999, held_out=False, version=args.data_version)
    x_all = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(255)
    x_val = torch.from_numpy(val).permute(0, 3, 1, 2).float().div(255)
    print(f"data {time.time() - t0:.1f}s", flush=True)

    model = taesd.TAESD(latent_channels=4)
    init_conv_(model, args.seed)
    if args.init:
        sd = {k: v.float() for k, v in load_file(args.init).items() if k.startswith("taesd_")}
        model.load_state_dict(sd, strict=False)
        print(f"initialised from {args.init}", flush=True)
    enc, dec = model.taesd_encoder, model.taesd_decoder
    if args.freeze_encoder:
        enc.requires_grad_(False)
    params = [p for p in list(enc.parameters()) + list(dec.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=args.lr)
    total = args.crop_steps + args.full_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / total))))

    for step in range(total):
        full = step >= args.crop_steps
        bs = args.full_batch if full else args.crop_batch
        idx = torch.randint(0, len(x_all), (bs,), generator=gen)
        x = x_all[idx]
        if not full:
            x = random_crops(x, gen)
        with torch.set_grad_enabled(not args.freeze_encoder):
            z = enc(x)
        if args.latent_noise > 0:
            amp = torch.rand(z.shape[0], 1, 1, 1, generator=gen) * args.latent_noise * z.detach().std()
            amp[: z.shape[0] // 2] = 0
            z = z + amp * torch.randn(z.shape, generator=gen)
        y = dec(z)
        loss = torch.nn.functional.mse_loss(y, x) + args.latent_reg * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == total - 1:
            with torch.no_grad():
                zv = enc(x_val)
                p = psnr(dec(zv), x_val)
            print(f"step {step} loss {loss.item():.5f} val_psnr {p:.2f} z_std {zv.std().item():.3f} "
                  f"t {time.time() - t0:.0f}s", flush=True)

    with torch.no_grad():
        if args.freeze_encoder and args.init:  # same encoder: keep its latent normalisation exactly
            init_sd = load_file(args.init)
            std = init_sd["vae_scale"].float().item()
            mean = -init_sd["vae_shift"].float().item() * std
            model.vae_scale.copy_(init_sd["vae_scale"].float())
            model.vae_shift.copy_(init_sd["vae_shift"].float())
        else:
            zv = enc(x_val)
            mean, std = zv.mean().item(), zv.std().item()
            model.vae_scale.fill_(std)
            model.vae_shift.fill_(-mean / std)
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, args.out, metadata={"format": "taesd", "latent_mean": str(mean), "latent_std": str(std)})
    print(f"saved {args.out} raw latent mean {mean:.4f} std {std:.4f}; total {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
