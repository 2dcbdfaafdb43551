"""Command-line flags shared by the commands: files and devices, memory, and the generation settings."""

from __future__ import annotations

import argparse
import sys

from engine.settings import CONTROL_FITS, CONTROL_MODES, DEPTH_MODELS, INPAINT_AREAS, size_presets


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line and exit code 2, instead of argparse's usage dump
        sys.stderr.write(f"error: {message} (see --help)\n")
        raise SystemExit(2)


def common_options(subcommand: bool = False) -> argparse.ArgumentParser:
    """Flags every command takes. A sub-command's copy has no defaults, so it keeps values given before it."""
    p = Parser(add_help=False, argument_default=argparse.SUPPRESS if subcommand else None)
    g = p.add_argument_group("files and devices")
    g.add_argument("--checkpoints", metavar="DIR", **({} if subcommand else {"default": "ckpts"}),
                   help="where model files are found and downloaded (default: ckpts/)")
    g.add_argument("--comfyui-models", metavar="DIR",
                   help="a ComfyUI models/ folder: its diffusion_models/, text_encoders/, vae/ files are used in place")
    g.add_argument("--model-def", action="append", metavar="FILE.json", **({} if subcommand else {"default": []}),
                   help="a model JSON from anywhere (its file name is the model type); repeatable")
    g.add_argument("--lora-dir-z-image", metavar="DIR", help="LoRA folder for Z-Image (default: loras/z_image)")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="compute precision (default: float32 on CPU, bfloat16 on GPU)")
    g.add_argument("--device", help="torch device, e.g. cuda, cuda:1, cpu (default: cuda if available)")
    g.add_argument("--text-encoder", metavar="FILE_OR_DIR",
                   help="use this Qwen3-4B-shaped text encoder (file or folder) instead of the model type's")
    g.add_argument("--vae", metavar="FILE_OR_DIR", help="use this Flux-style 16-channel VAE instead of the model type's")
    g.add_argument("--finetunes", metavar="DIR", help="your model JSONs; `quantize` adds its files here "
                                                      "(default: finetunes/)")
    g.add_argument("--upscaler-dir", metavar="DIR", help="upscaler models, .safetensors (default: "
                                                         "<checkpoints>/upscalers)")
    memory_options(p)
    limit_options(p)
    return p


def limit_options(p: argparse.ArgumentParser) -> None:
    """What one job may ask for, on every front-end (engine.limits)."""
    g = p.add_argument_group("limits per job (the page, the API and the command line alike)")
    g.add_argument("--max-batch", type=int, metavar="N", help="images per pass at most (default 8)")
    g.add_argument("--max-count", type=int, metavar="N", help="batches per job at most (default 20)")
    g.add_argument("--max-megapixels", type=float, metavar="MP",
                   help="width x height x batch of one pass at most, in megapixels (default 16, one 4096x4096 "
                        "image)")


def memory_options(p: argparse.ArgumentParser) -> None:
    """Which files (INT8 or bf16) are loaded, and how the GPU's memory is managed."""
    from engine.load_options import ATTENTION_CHOICES, PROFILE_CHOICES, QUANTIZATION_CHOICES

    g = p.add_argument_group("memory and precision")
    g.add_argument("--transformer-quantization", choices=QUANTIZATION_CHOICES,
                   help="which of the model's transformer files: bf16, int8 (quanto), fp8 (ComfyUI), gguf, nunchaku, "
                        "or auto (default: the first one on disk, else the first listed)")
    g.add_argument("--text-encoder-quantization", choices=QUANTIZATION_CHOICES,
                   help="the same choice for the Qwen3 text encoder")
    g.add_argument("--profile", type=int, choices=PROFILE_CHOICES,
                   help="mmgp memory profile on CUDA, 1 (64 GB RAM, 24 GB VRAM: fastest) to 5 (24 GB RAM, 10 GB "
                        "VRAM: slowest); 0 = none, all on the GPU (default: suggested for this machine)")
    g.add_argument("--preload", type=int, dest="preload_mb", metavar="MB",
                   help="MB of the transformer kept in VRAM with profiles 2, 4, 5 (default: the profile's)")
    g.add_argument("--compile", action="store_true", help="torch.compile the transformer's blocks (CUDA profiles)")
    g.add_argument("--attention", choices=ATTENTION_CHOICES, help="attention kernel (default sdpa; flash and sage "
                                                                  "need their packages and CUDA)")
    g.add_argument("--vram-safety-coefficient", type=float, metavar="X",
                   help="share of VRAM a profile may fill with weights, 0-1 (default 0.8)")
    g.add_argument("--text-encoder-device", metavar="DEV",
                   help="run the text encoder on this device, e.g. cuda:1 (a second GPU), whole and outside the "
                        "memory profile (default: with the transformer)")


def generate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model type (see `python app.py models`); default z_image, or the PNG's")
    p.add_argument("--prompt", help="what to draw")
    p.add_argument("--negative-prompt", help="what to avoid (CFG on the base model, NAG on distilled ones)")
    p.add_argument("--seed", type=int, help="-1 for random (default); the seed used is in the PNG and printed")
    p.add_argument("--steps", type=int, dest="num_inference_steps", help="denoising steps (the model type's range: Turbo and control 1-50, "
                                                                       "base 1-100, TwinFlow 1-8)")
    p.add_argument("--guidance", type=float, dest="guidance_scale", help="CFG scale, 0 = off (base model: 4)")
    p.add_argument("--cfg-truncation", type=float, help="stop CFG once 1 - sigma passes this (0-1, 1 = never)")
    p.add_argument("--cfg-normalization", type=float, help="cap the guided prediction's norm at k x the positive's")
    p.add_argument("--shift", type=float, dest="flow_shift", help="flow shift of the noise schedule (default 3)")
    p.add_argument("--sampler", help="euler (default), euler_ancestral, heun, ralston, dpmpp_2m (heun and ralston "
                                     "cost two passes per step); twinflow for TwinFlow")
    p.add_argument("--scheduler", help="sigma schedule: simple (default), beta, sgm_uniform")
    p.add_argument("--sigma-rescale", type=float, help="multiply all sigmas by this (0.5-1, 1 = off)")
    g = p.add_argument_group("NAG: negative prompts without CFG (Turbo, TwinFlow, control types)")
    g.add_argument("--nag-scale", type=float, help="1 = off; defaults from the model type (Turbo 3)")
    g.add_argument("--nag-tau", type=float, help="cap on the guided/positive L1 ratio per token (default 2.5)")
    g.add_argument("--nag-alpha", type=float, help="blend of guided and positive attention, 0-1 (default 0.25)")
    g.add_argument("--nag-start", type=float, help="first step with NAG, as a fraction of the steps (default 0)")
    g.add_argument("--nag-end", type=float, help="NAG stops at this fraction of the steps (default 0.75)")
    p.add_argument("--width", type=int, help="multiple of 16, 256-4096")
    p.add_argument("--height", type=int, help="multiple of 16, 256-4096")
    p.add_argument("--aspect", choices=list(size_presets()), help="preset size of this aspect ratio")
    p.add_argument("--megapixels", type=float, choices=[1.0, 2.0], default=1.0, help="size class for --aspect")
    p.add_argument("--batch", type=int, dest="batch_size", help="images per pass (1-8; --max-batch raises it up to 16)")
    p.add_argument("--count", type=int, help="runs, with successive seeds (1-20; --max-count raises it up to 100)")
    p.add_argument("--output", default="outputs", metavar="FILE_OR_DIR",
                   help="folder (default outputs/) or a .png name; existing files are never overwritten")
    p.add_argument("--settings-from", metavar="PNG", help="start from the settings stored in a PNG made by this app")
    p.add_argument("--enhance", action="store_true", default=None,
                   help="let the text encoder rewrite the prompt into a detailed one first (seeded)")
    p.add_argument("--enhance-thinking", action="store_true", default=None, help="let the enhancer think first")
    p.add_argument("--text-hidden-layer", type=int, help="text encoder hidden state used (default -2)")
    p.add_argument("--seed-variance", type=float, help="noise on the prompt embedding early on, x its std "
                                                       "(0 = off; try 0.5-2 for more varied Turbo seeds)")
    p.add_argument("--seed-variance-fraction", type=float, help="share of embedding values given noise (0-1)")
    p.add_argument("--seed-variance-steps", type=float, help="share of the steps with the noise (0-1)")
    lora_options(p)
    control_options(p)
    image_options(p)


def lora_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", action="append", metavar="NAME[:STRENGTH]",
                   help="a LoRA from the LoRA folder (path inside it), strength -2..2 (default 1); "
                        "NAME:1.0,0.5 spreads per-step strengths over the steps; a final :positive applies it to "
                        "CFG's positive branch only, :both to both (default: the file's choice, else both); "
                        "repeatable")
    p.add_argument("--lora-preset", metavar="PRESET", help="the LoRAs (and prompt snippet) of a saved preset")


def control_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("control (control model types: z_image_control, z_image_control2, z_image_control2_1)")
    g.add_argument("--control-image", metavar="IMAGE", help="picture to follow (turned into a map by --control-mode)")
    g.add_argument("--control-mode", choices=list(CONTROL_MODES),
                   help="pose, canny, depth, gray: made from the picture; raw: the picture is a ready map (HED, "
                        "scribble, MLSD, tile, ...); none: no map, inpaint only (default raw)")
    g.add_argument("--control-weight", type=float, help="strength of control, 0-2 (model default, about 0.75-0.9)")
    g.add_argument("--control-start", type=float, help="fraction of the steps where control starts (default 0)")
    g.add_argument("--control-end", type=float, help="fraction of the steps where control ends (default 1)")
    g.add_argument("--control-fit", choices=list(CONTROL_FITS),
                   help="fit the picture to the output size: crop (default), fit (letterbox), or image (output "
                        "size from the picture's aspect ratio)")
    g.add_argument("--mask", metavar="IMAGE", help="inpaint, white = repaint: of --init-image, or without one of "
                                                   "--control-image (2.x control types)")
    g.add_argument("--canny-low", type=int, help="canny low threshold (default 100)")
    g.add_argument("--canny-high", type=int, help="canny high threshold (default 200)")
    g.add_argument("--depth-model", choices=list(DEPTH_MODELS), help="Depth Anything V2 size (default small)")


def image_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("images in: img2img, inpaint, outpaint, hires fix, upscale (every model type)")
    g.add_argument("--init-image", metavar="IMAGE", help="start from this picture (the output takes its size)")
    g.add_argument("--strength", type=float, help="share of the steps re-run on the init image, 0-1 (default 0.6; "
                                                  "0 returns it as is, 1 paints from noise)")
    g.add_argument("--mask-blur", type=int, help="px of feathered mask edge (default 4)")
    g.add_argument("--mask-grow", type=int, help="px to grow (or, negative, shrink) the mask first (default 0)")
    g.add_argument("--inpaint-area", choices=list(INPAINT_AREAS),
                   help="whole picture (default) or masked: the masked area plus padding, made at --width x --height")
    g.add_argument("--inpaint-padding", type=int, help="px of context around the masked area (default 32)")
    g.add_argument("--outpaint", metavar="L,R,T,B", help="extend the init image by these pixels (left, right, top, "
                                                         "bottom) and paint them")
    g.add_argument("--hires", "--upscale", type=float, dest="upscale", metavar="X",
                   help="text-to-image: hires fix, a second pass at X times the size; with --init-image: upscale it "
                        "X times before its pass (1-8)")
    g.add_argument("--upscaler", help="lanczos (default), latent (hires fix only) or an upscaler model in the "
                                      "upscaler folder, e.g. 4x-UltraSharp")
    g.add_argument("--hires-strength", type=float, help="strength of the hires fix's second pass (default 0.35)")
    g.add_argument("--hires-steps", type=int, help="steps of the second pass (default: --steps)")
