"""LoRA training: model-agnostic parts; a family supplies the model side (models/<family>/training.py).

settings.py    TrainSettings: what a run asks for, validated once
dataset.py     the image folder: captions (same-name .txt), trigger fallback, skipped files, a content hash
buckets.py     aspect-ratio buckets (sides multiples of 32) and fitting an image into one
timesteps.py   flow-matching noise levels: the shifted 1000-step grid, uniform or bell-weighted
lora.py        the trained LoRA: fp32 factors applied by forward hooks on frozen Linear layers
optim.py       AdamW, or 8-bit AdamW where bitsandbytes and CUDA exist
checkpoint.py  resumable state (LoRA, optimizer, step, RNG) in safetensors: tensors + JSON, no pickle
output.py      the finished LoRA file: atomic, never overwriting, with its metadata
events.py      progress events a training job reports
run.py         one training run, start to finish, as a job on the engine's queue
"""
