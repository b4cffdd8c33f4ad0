"""Launched by test_vision_lora.py under ``accelerate launch --num_processes 2 --cpu``: every rank trains
the tiny multimodal model a few steps on synthetic clips and saves its LoRA weights for comparison."""
import os
import sys
from pathlib import Path

from safetensors.torch import save_file

import gemma_helpers as gh
from gemma_helpers import models, offline, vision
from gemma_helpers.chat import VisionCollator
from gemma_helpers.data import frames as F

out = Path(sys.argv[1])
rank = int(os.environ.get("RANK", "0"))
root = out / f"data-rank{rank}"  # each rank writes the same clips (same seed) to its own folder
rows, _ = F.build_rows(offline.synthetic_clips(root / "clips", per_action=1, n_frames=6, size=48), root, 4, 48,
                       progress=False)
model, processor = vision.tiny_vision_model(seed=0)
spec = gh.TrainSpec(target_modules=models.LANGUAGE_TARGETS, max_steps=3, batch_size=1, learning_rate=1e-2,
                    save_steps=1000)
result = gh.train(model, processor, rows, spec, out / f"run-rank{rank}",
                  data_collator=VisionCollator(processor, lambda r: F.load_images(r, root)))
lora = {n: p.detach().cpu().contiguous() for n, p in result.model.named_parameters() if "lora_" in n}
save_file(lora, str(out / f"lora-rank{rank}.safetensors"))
print(f"rank {rank} of {os.environ.get('WORLD_SIZE')}: {result.global_step} steps, {len(lora)} LoRA tensors")
