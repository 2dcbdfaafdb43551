"""A first web UI on the engine: controls come from the selected model type's capabilities."""

from __future__ import annotations

import dataclasses

from core.errors import Interrupted, UserError


def build_ui(engine, lock_model: str | None = None):
    import gradio as gr

    types = [lock_model] if lock_model else sorted(engine.registry.types)
    first = "z_image" if "z_image" in types else types[0]

    def caps_of(model_type):
        model_def = engine.registry.get(model_type)
        return engine.registry.handler(model_type).capabilities(model_def.architecture)

    def on_model(model_type):
        s = engine.settings_for(model_type)
        caps = caps_of(model_type)
        lo, hi = caps.step_range
        return (gr.update(value=s.num_inference_steps, minimum=lo, maximum=hi),
                gr.update(value=s.guidance_scale, visible=caps.cfg),
                gr.update(visible=caps.cfg), gr.update(value=s.flow_shift, visible=caps.shift),
                gr.update(value=s.width), gr.update(value=s.height))

    def run(model_type, prompt, negative, seed, steps, guidance, shift, width, height, batch,
            progress=gr.Progress()):
        try:
            settings = engine.settings_for(model_type)
            settings = dataclasses.replace(
                settings, prompt=prompt, negative_prompt=negative or "", seed=int(seed),
                num_inference_steps=int(steps), guidance_scale=float(guidance) if caps_of(model_type).cfg else 0.0,
                flow_shift=float(shift), width=int(width), height=int(height), batch_size=int(batch))
            results = engine.generate(settings, callback=lambda r, i, n, x: progress((i + 1, n)))
            paths = engine.save(results, "outputs")
            return [str(p) for p in paths], f"seed {results[0].settings.seed}"
        except (UserError, Interrupted) as exc:
            raise gr.Error(str(exc)) from None

    with gr.Blocks(title="Z-Image Studio") as demo:
        gr.Markdown("# Z-Image Studio")
        with gr.Row():
            with gr.Column():
                model = gr.Dropdown(types, value=first, label="Model type")
                prompt = gr.Textbox(label="Prompt", lines=3)
                negative = gr.Textbox(label="Negative prompt", visible=caps_of(first).cfg)
                with gr.Row():
                    seed = gr.Number(-1, label="Seed (-1 random)", precision=0)
                    steps = gr.Slider(1, 50, value=8, step=1, label="Steps")
                with gr.Row():
                    guidance = gr.Slider(0, 15, value=0, step=0.5, label="Guidance (CFG)", visible=caps_of(first).cfg)
                    shift = gr.Slider(0.5, 12, value=3, step=0.1, label="Shift")
                with gr.Row():
                    width = gr.Number(1024, label="Width", precision=0)
                    height = gr.Number(1024, label="Height", precision=0)
                    batch = gr.Slider(1, 8, value=1, step=1, label="Batch")
                go = gr.Button("Generate", variant="primary")
            with gr.Column():
                gallery = gr.Gallery(label="Images", format="png")
                info = gr.Markdown()
        model.change(on_model, model, [steps, guidance, negative, shift, width, height])
        demo.load(on_model, model, [steps, guidance, negative, shift, width, height])
        go.click(run, [model, prompt, negative, seed, steps, guidance, shift, width, height, batch], [gallery, info],
                 api_name="generate")
    return demo
