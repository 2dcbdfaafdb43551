"""LoRAs: reading every common file format, and applying several at once without touching base weights.

format.py   key grammar shared by all families (lora_A/lora_down/alpha, LoKr, LoHa, full deltas)
adapters.py the tensors of one module's delta, and its forward (low-rank, Kronecker or dense)
apply.py    forward hooks adding the active deltas to Linear outputs, with per-step strengths
library.py  the LoRA folder: safe names, scanning, sha256, what a PNG records
presets.py  named sets of LoRAs saved in the folder
A family maps module names in models/<family>/lora_keys.py.
"""
