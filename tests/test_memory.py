"""gemma_helpers.memory: the training monitor on a real run, the peak sampler, the process's high-water mark."""
import mmap

import gemma_helpers as gh
from gemma_helpers import memory


def qa(q, a):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def test_memory_monitor_measures_a_real_training_peak(tmp_path, embedded_dir):
    mem = gh.memory_monitor()
    model, tok = gh.load_model()
    mem.mark("loaded")
    model = gh.attach_lora(model, r=4, alpha=8, target_modules=("q_proj", "v_proj"))
    mem.mark("adapter")
    rows = [qa("پایتخت ایران کجاست؟", "پایتخت ایران تهران است.")] * 4
    spec = gh.TrainSpec(r=4, alpha=8, target_modules=("q_proj", "v_proj"), max_steps=2, batch_size=2, save_steps=100)
    gh.train(model, tok, rows, spec, tmp_path, callbacks=[mem])
    report = mem.report()
    # weights_mb is not asserted here: in a test process that already loaded the model, the allocator
    # reuses freed pages and the RSS step at loading can be small; the notebook measures it in a fresh kernel
    # the optimiser state and the gradients are allocated during training: the peak must hold them
    assert report["training_added_mb"] > report["optimizer_state_mb"] + report["gradients_mb"], report
    # Adam keeps two float32 moments per trainable parameter, plus a step counter per tensor
    adapter = report["adapter_params_mb"]
    assert adapter > 0 and 2 * adapter <= report["optimizer_state_mb"] < 2 * adapter + 0.01
    assert report["gradients_mb"] == adapter


def test_the_peak_sampler_sees_memory_held_only_inside_the_block():
    size = 200 * memory.MB
    with memory.PeakSampler(every=0.01) as sampler:
        # a fresh mapping with every page written: resident now whatever the allocator kept from earlier
        # tests (a malloc'd block can reuse freed pages that are resident already, and RSS does not move)
        block = mmap.mmap(-1, size)
        for offset in range(0, size, mmap.PAGESIZE):
            block[offset] = 1
        sampler.sample()
        block.close()
    assert sampler.peak_mb - sampler.start_mb > 0.9 * size / memory.MB
    assert memory.rss_bytes() < sampler.peak  # freed again after the block
    assert memory.peak_rss_mb() >= sampler.peak_mb - 1  # the high-water mark saw it too


def test_release_frees_a_model_nothing_refers_to(monkeypatch):
    import weakref

    import torch

    from gemma_helpers import memory

    model = torch.nn.Linear(4, 4)
    model.me = model  # a cycle: only the collector frees it
    alive = weakref.ref(model)
    model = None
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: 3 * memory.MB)
    assert memory.release() == 3.0
    assert alive() is None and emptied == [True]
