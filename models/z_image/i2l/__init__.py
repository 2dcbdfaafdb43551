"""Image to LoRA (DiffSynth-Studio's Z-Image-i2L v1): a style LoRA from 1-16 pictures in one forward pass.

Two image encoders describe each picture (SigLIP2-G384's pooled output [1536], DINOv3-7B's CLS token after the
final norm [4096]); a hypernetwork turns the joined [5632] vector into rank-4 lora_A / lora_B for every attention
and feed-forward Linear of the 34 transformer blocks; several pictures' LoRAs are joined along the rank with A
scaled by 1/N (the average of their deltas). The models run one after another, each freed before the next.

  files.py      where the three files are (DiffSynth's layout, the ComfyUI node's), downloads
  identify.py   what a weight file is, from its names (encoders, hypernetwork, Qwen-Image-i2L, ...)
  encoders.py   the encoders as transformers' own classes, configs read from the files; preprocessing
  hypernet.py   the hypernetwork in its released names; per-picture LoRAs and their merge
  pictures.py   the user's pictures: checks and DiffSynth's 1024 centre crop
  run.py        the request (checked before any loading) and the sequential run that writes the LoRA
  tiny.py       tiny random encoders and hypernetwork in the released layouts (tests, benchmarks)
"""
