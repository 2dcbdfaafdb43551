"""Run in a subprocess by tests/test_offload.py: importing mmgp patches globals for the whole process.

Prints one JSON line of findings: images before and after importing mmgp, transformers loading after it,
and files exchanged both ways between mmgp's INT8 writer/reader and this app's.
Usage: python tests/mmgp_probe.py MODEL_JSON WORK_DIR
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def generate(model_json: Path, **options):
    from engine.engine import Engine
    from engine.weights.files import FileLocator
    from engine.load_options import LoadOptions
    from engine.registry import Registry
    from models import families

    engine = Engine(Registry(families(), extra_files=[model_json]), FileLocator(offline=True), options=LoadOptions(**options))
    s = engine.settings_for(model_json.stem, prompt="a red fox", seed=11, width=256, height=256,
                            num_inference_steps=3)
    return np.asarray(engine.generate(s)[0].image)


def forward(transformer, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x, cap = torch.randn(16, 1, 16, 16, generator=g), torch.randn(9, 32, generator=g)
    with torch.no_grad():
        return transformer([x.to(dtype)], torch.tensor([0.3]), [cap.to(dtype)], return_dict=False)[0][0].float()


def main(model_json: Path, work: Path) -> None:
    from engine.placement import offload
    from engine.weights import quantization as Q
    from models.z_image import loader, tiny
    from engine.weights.assign import state_dict_for_file

    found = {}
    int8_tr = work / "ours_quanto_bf16_int8.safetensors"
    reference = tiny.make_transformer().to(torch.bfloat16)
    modules = Q.block_linears(reference)
    config = {k: v for k, v in dict(reference.config).items() if not k.startswith("_")}
    Q.save_atomically(Q.quantized_state_dict(state_dict_for_file(reference), modules), int8_tr,
                      Q.int8_metadata(modules, config))
    int8_json = work / "probe_int8.json"
    data = json.loads(model_json.read_text())
    data["model"]["URLs"] = str(int8_tr)
    int8_json.write_text(json.dumps(data))

    before = generate(model_json)
    before_int8 = generate(int8_json)
    mmgp = offload.import_mmgp()
    found["mmgp_imported"] = "mmgp" in sys.modules
    after = generate(model_json)
    found["bf16_image_unchanged"] = bool(np.array_equal(before, after))
    found["int8_image_unchanged"] = bool(np.array_equal(before_int8, generate(int8_json)))

    from transformers import Qwen3ForCausalLM

    encoder = tiny.make_text_encoder()
    encoder.save_pretrained(str(work / "hf_encoder"))
    try:
        again = Qwen3ForCausalLM.from_pretrained(str(work / "hf_encoder"))
        found["transformers_from_pretrained"] = bool(torch.equal(again.model.embed_tokens.weight,
                                                                 encoder.model.embed_tokens.weight))
    except Exception as exc:  # the failure this guards against is a TypeError inside transformers
        found["transformers_from_pretrained"] = f"{type(exc).__name__}: {exc}"

    # mmgp writes an INT8 file (quantizing every Linear of this tiny model); this app reads it.
    theirs = work / "mmgp_quanto_bf16_int8.safetensors"
    plain = tiny.make_transformer().to(torch.bfloat16)
    mmgp.save_model(plain, str(theirs), do_quantize=True)
    ours = loader.load_transformer(theirs, {}, torch.float32)
    want = forward(tiny.make_transformer())
    found["mmgp_file_int8_layers"] = len(Q.int8_modules_of(ours))
    found["mmgp_file_rel_error"] = float((forward(ours) - want).norm() / want.norm())

    # this app writes an INT8 file; mmgp's loader reads it into the same integers and scales.
    from diffusers import ZImageTransformer2DModel

    theirs_model = mmgp.fast_load_transformers_model(str(int8_tr), modelClass=ZImageTransformer2DModel)
    mine = loader.load_transformer(int8_tr, {}, torch.bfloat16)
    same = []
    for name in modules:
        a, b = theirs_model.get_submodule(name).weight, mine.get_submodule(name).weight
        same.append(torch.equal(a._data, b._data) and torch.equal(a._scale, b._scale))
    found["our_file_read_by_mmgp"] = len(same) > 0 and all(same)
    print(json.dumps(found))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
