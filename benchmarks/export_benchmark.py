"""Notebook 05's table from the command line: merge an adapter, export GGUF files, quantise them, and
measure every stage the same way (each in a fresh process).

    python benchmarks/export_benchmark.py                       # notebook 03's Xylandia adapter
    python benchmarks/export_benchmark.py --adapter DIR --quants Q4_K_M Q5_K_M Q8_0 --lora

Prints the table, writes outputs/results/bench_export.json and charts/bench_export_{speed,size}.png.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gemma_helpers as gh


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, help="a LoRA adapter folder (default: notebook 03's, trained if absent)")
    parser.add_argument("--out", type=Path, default=gh.env.REPO_ROOT / "outputs" / "bench_export")
    parser.add_argument("--outtypes", nargs="+", default=["f16", "q8_0"], choices=gh.gguf_convert.OUTTYPES)
    parser.add_argument("--quants", nargs="+", default=["Q4_K_M"], choices=gh.gguf_convert.QUANT_TYPES)
    parser.add_argument("--lora", action="store_true", help="also the adapter as a LoRA GGUF on its base's f16 GGUF")
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)

    data = gh.fact_injection.xylandia_data()
    adapter = args.adapter or gh.fact_injection.xylandia_adapter()
    merged = gh.merge(adapter, args.out / "merged")
    files = {t: gh.to_gguf(merged, t, args.out / "gguf") for t in args.outtypes}
    if "f16" not in files and args.quants:
        files["f16"] = gh.to_gguf(merged, "f16", args.out / "gguf")
    files.update({q: gh.quantize(files["f16"], q) for q in args.quants})
    stages = [gh.bench.Stage("adapter", "adapter", str(adapter)), gh.bench.Stage("merged", "transformers", str(merged)),
              *[gh.bench.Stage(f"gguf {name}", "gguf", str(path)) for name, path in files.items()]]
    if args.lora:
        base_gguf = gh.to_gguf(gh.merging.save_trained_base(adapter, args.out / "base"), "f16", args.out / "gguf")
        lora = gh.gguf_convert.lora_to_gguf(adapter, args.out / "gguf" / "adapter-lora-f32.gguf")
        stages.append(gh.bench.Stage("gguf f16 + LoRA", "gguf", str(base_gguf), lora=str(lora)))
    work = gh.bench.workload(merged, data["neutral_text"], data["neutral_text"], data["heldout_questions"],
                             data["expected"], gen_tokens=args.gen_tokens, threads=args.threads)
    measured = gh.bench.measure_all(stages, work)
    print(gh.bench.table(measured))
    names = {r["name"] for r in measured}
    speedups = {q: gh.bench.speedup(measured, f"gguf {q}", "merged") for q in args.quants if f"gguf {q}" in names}
    for quant, ratio in speedups.items():
        print(f"{quant}: {ratio:.1f}x the merged transformers model's generated tokens/s")
    gh.plots.metric_panels(measured, {"gen_tps": "generated tokens / s", "prompt_tps": "prompt tokens / s"},
                           "bench_export_speed.png", "Export stages: speed")
    gh.plots.metric_panels(measured, {"size_mb": "files loaded (MiB)", "peak_rss_mb": "peak RSS (MiB)",
                                      "perplexity": "perplexity"}, "bench_export_size.png", "Export stages: size")
    path = gh.results.save("bench_export", {"stages": measured, "speedup_vs_merged": speedups,
                                            "command": " ".join(["python", *sys.argv])})
    print("written to", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
