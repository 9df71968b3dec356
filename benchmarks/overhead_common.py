"""Set-up shared by the overhead benchmarks (unifyedit_overhead.py, technique_overhead.py): the timing options,
booting ComfyUI with a chosen thread count and device, an embedded-model workload, and one timed Edit Sampler run."""
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "benchmarks", ROOT / "workflows"):  # the pack, the benchmarks, edit_methods' `build`
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def add_timing_args(p, steps, clock):
    """The options every overhead benchmark shares: steps, repeats, warm-up, threads, device, clock, JSON output."""
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of each variant first (default 1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--clock", choices=("wall", "cpu"), default=clock, help=f"wall: elapsed time; cpu: process CPU "
                   f"time (robust to other jobs on the cores); default {clock}")
    p.add_argument("--json", help="also write the results to this file")


def boot(args):
    import torch
    torch.set_num_threads(args.threads)
    gpu = args.device == "gpu" or (args.device == "auto" and torch.cuda.is_available())
    import logging
    from harness import runtime
    runtime.boot(cpu=not gpu)
    logging.getLogger().setLevel(logging.ERROR)
    import comfy.model_management
    return runtime, comfy.model_management.get_torch_device()


def embedded_workload(runtime, case_index, denoiser="unet"):
    """{model, clip, latent, src, tgt, neg, cfg, label, prompt, words, case}
    on the embedded denoiser ('unet' or 'flux'), with the edit benchmark's target CFG."""
    import torch
    from embedded import dataset
    from embedded.edit_suite import benchmark_cases
    from edit_methods import CFG
    case = benchmark_cases()[case_index]
    model, clip, vae = runtime.pack_module("embedded.loader").load_embedded(denoiser)
    encode = lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text))  # noqa: E731
    image, _ = dataset.render_scene(case.source, 64)
    latent = vae.encode(torch.from_numpy(image)[None])
    return dict(model=model, clip=clip, latent=latent, src=encode(case.source_prompt), tgt=encode(case.target_prompt),
                neg=encode(""), cfg=CFG[denoiser], label=case.name, prompt=case.target_prompt,
                words=case.target_word, case=case)


def timed_edit(runtime, model, inv, branches, negative, sync, clock=time.perf_counter):
    """Seconds of one Edit Sampler run (latent_ops.edit.edit, as the node runs it) and its {role: latent}."""
    edit = runtime.pack_module("latent_ops.edit")
    sync()
    start = clock()
    out, run = edit.edit(model, inv, branches, negative=negative)
    sync()
    end = clock()
    run.release()
    return end - start, out
