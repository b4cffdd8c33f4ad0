"""Training throughput and memory: ``gemma_helpers.train`` against a plain transformers Trainer + peft.

For each recipe both trainers run the same model, rows, answer-only labels, LoRA, seed and
batch for ``--steps`` optimizer steps. Every run is a fresh process (so the peak memory of one
is not the next one's), and the order alternates round by round (ours first, then the
baseline first) so that the load of a shared machine falls on both alike. Reported:

- tokens/s: REAL tokens (input tokens that are not padding) per second, over the steps after
  the first (which pays one-off costs); labelled tokens/s is printed beside it;
- s/step; peak memory: RSS sampled during training on CPU, ``max_memory_allocated`` on GPU;
- final loss, and the largest per-step loss difference between the two (same batches: the
  losses must agree within LOSS_TOLERANCE, or the comparison is not like for like; ours computes
  in bfloat16 on a CPU with AVX512-BF16 / AMX, the baseline in float32);
- model FLOPs: per step by ``gemma_helpers.throughput.FLOPS_FORMULA`` (forward, activation gradients,
  LoRA, attention, LM head on labelled positions), the GFLOP/s each side achieved, and the
  machine's peak measured in the same run (before and after each recipe's rounds) by a matrix
  product at the model's MLP shape, in float32 and bfloat16.

CPU (always):  python benchmarks/train_throughput.py [--steps 6 --rounds 2 --persian data/persian_chat.jsonl]
GPU (CUDA):    python benchmarks/train_throughput.py --gpu   (random-weight Gemma 3 1B / Gemma 3n E4B text, 4-bit)

Writes outputs/results/bench_train.json (bench_train_float32.json with --compute-dtype float32, bench_train_gpu.json
with --gpu) and its chart under charts/.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MARK = "BENCH_TRIAL_RESULT "
# The largest per-step loss difference allowed between ours and the baseline (nats per labelled
# token): bfloat16 autocast against float32; tests/test_train.py holds bf16 to float32 at the same bound.
LOSS_TOLERANCE = 0.05
LABELS = {"ours": "gemma_helpers.train", "baseline": "plain Trainer + peft"}


# ---------------------------------------------------------------- recipes
BENCH_RECIPES = {"xylandia": "xylandia-seed", "persian": "persian", "papers": "papers"}  # --recipes name: registry name


def recipe_rows(name: str, args) -> tuple[list[dict], object]:
    """``(rows, TrainSpec)`` of a recipe: its numbers from the registry's ``bench`` profile
    (``gemma_helpers/recipes.py``), its rows built as its notebook builds them; raises
    FileNotFoundError naming a missing file."""
    import gemma_helpers as gh

    if name not in BENCH_RECIPES:
        raise ValueError(f"unknown recipe {name!r} ({', '.join(BENCH_RECIPES)})")
    recipe = gh.recipes.get(BENCH_RECIPES[name], "bench")
    if name == "xylandia":  # notebook 03's seed recipe
        rows = gh.fact_injection.xylandia_rows(gh.fact_injection.xylandia_data(ROOT / recipe["data"]), recipe["repeats"])
    elif name == "persian":  # cleaned as notebook 02 cleans it: the bundled sample carries deliberately bad rows
        from gemma_helpers.data import persian

        rows, _ = persian.clean_conversations(gh.jsonl.read_jsonl(args.persian or ROOT / recipe["data"], errors="raise"))
    elif args.papers:  # notebook 01's LoRA on attention + MLP, next-sentence rows from the training papers
        path = Path(args.papers)
        if not path.exists():
            raise FileNotFoundError(path)
        rows = gh.jsonl.read_jsonl(path, errors="raise")
    else:  # the bundled mini-papers (data/papers_sample.json), rows built as notebook 01 builds them
        from gemma_helpers.data import papers

        rows = papers.sample_rows("train")
    return rows, recipe.spec(max_steps=args.steps)


# ---------------------------------------------------------------- one trial, in its own process
def random_checkpoint(name: str, folder: Path) -> Path:
    """A real-size, random-weight checkpoint (no download): Gemma 3 1B, or Gemma 3n E4B's text stack."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3nTextConfig, Gemma3TextConfig

    import gemma_helpers as gh

    target = folder / name
    if (target / "config.json").exists():
        return target
    if name == "gemma-3-1b":  # google/gemma-3-1b-pt config.json
        config = Gemma3TextConfig(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                                  num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262144,
                                  sliding_window=512, query_pre_attn_scalar=256, max_position_embeddings=32768)
    elif name == "gemma-3n-e4b-text":  # Gemma3nTextConfig's defaults are the E4B text stack
        config = Gemma3nTextConfig()
    else:
        raise ValueError(f"unknown random-weight model {name!r}")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(gh.embedded.embedded_path()).save_pretrained(target)
    return target


def load(side: str, model_name: str, load_in_4bit: bool):
    """Ours: ``gh.load_model`` (unsloth on a GPU when installed). Baseline: plain transformers (+ bitsandbytes)."""
    import torch

    import gemma_helpers as gh

    if side == "ours":
        return gh.load_model(model_name, load_in_4bit=load_in_4bit)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = gh.models.resolve(model_name)
    dtype = gh.env.train_dtype()
    kwargs = {"dtype": dtype, "use_safetensors": True}
    if load_in_4bit:
        kwargs["quantization_config"] = gh.models.bnb_config(dtype)
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": 0}
    tokenizer = AutoTokenizer.from_pretrained(path)
    gh.models.prepare_tokenizer(tokenizer)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs), tokenizer


def peak(args) -> dict:
    """The machine's matrix-product rate at the model's MLP shape (512 tokens), float32 and bfloat16."""
    import torch

    import gemma_helpers as gh
    from gemma_helpers.throughput import ModelShape, matmul_peak_gflops
    from transformers import AutoConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = ModelShape.from_config(AutoConfig.from_pretrained(gh.models.resolve(args.model)[0]))
    m, k, n = 512, shape.hidden, shape.intermediate
    return {"shape": f"({m} x {k}) @ ({k} x {n})", "threads": torch.get_num_threads(),
            **{dtype: matmul_peak_gflops(m, k, n, dtype) for dtype in ("float32", "bfloat16")}}


def trial(args) -> dict:
    import torch

    import gemma_helpers as gh
    from gemma_helpers.throughput import ModelShape, baseline_train, step_meter
    from gemma_helpers.memory import PeakSampler, peak_mb, reset_peak
    from gemma_helpers.train import compute_dtype, padding_free

    if args.threads:
        torch.set_num_threads(args.threads)
    rows, spec = recipe_rows(args.recipe, args)
    pf = {"auto": None, "on": True, "off": False}[args.padding_free]
    spec = dataclasses.replace(spec, padding_free=pf, compute_dtype=args.compute_dtype)
    model_name = args.model
    if args.gpu:
        model_name = str(random_checkpoint(args.model, Path(args.cache)))
    started = time.time()
    model, tok = load(args.trial, model_name, args.precision == "nf4")
    load_s = time.time() - started
    shape = ModelShape.from_config(model.config)
    meter = step_meter()
    reset_peak()
    with tempfile.TemporaryDirectory() as out, PeakSampler() as rss:
        if args.trial == "ours":
            result = gh.train(model, tok, rows, spec, out, callbacks=[meter])
        else:
            result = baseline_train(model, tok, rows, spec, out, callbacks=[meter])
    peak = peak_mb() if torch.cuda.is_available() else rss.peak_mb
    return {
        "side": args.trial, "recipe": args.recipe, "model": args.model, "precision": args.precision,
        "packed": bool(args.trial == "ours" and padding_free(spec)),
        "load_s": load_s, "rss_before_train_mb": rss.start_mb, "peak_mb": peak,
        "losses": [h["loss"] for h in result.history], "final_loss": result.history[-1]["loss"],
        "compute_dtype": compute_dtype(spec) if args.trial == "ours" else "float32",
        "threads": torch.get_num_threads(), **meter.stats.summary(warmup=args.warmup),
        **meter.stats.flops(shape, spec.r, spec.target_modules, warmup=args.warmup),
        "step_s": meter.stats.step_s,
    }


# ---------------------------------------------------------------- the side-by-side run
def run_trial(argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *argv], check=False, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
    raise RuntimeError(f"trial {' '.join(argv)} failed with exit status {proc.returncode} (its output is above)")


def combine(trials: list[dict]) -> dict:
    """Pool the rounds of one side: tokens over seconds, summed across rounds."""
    seconds = sum(t["s_per_step"] * t["steps_timed"] for t in trials)
    steps = sum(t["steps_timed"] for t in trials)
    return {
        "gflops": sum(t["gflops"] * t["s_per_step"] * t["steps_timed"] for t in trials) / seconds,
        "flops_per_step": sum(t["flops_per_step"] * t["steps_timed"] for t in trials) / steps,
        "compute_dtype": trials[-1]["compute_dtype"],
        "tps": sum(t["real_tokens"] for t in trials) / seconds,
        "labelled_tps": sum(t["labelled_tokens"] for t in trials) / seconds,
        "s_per_step": seconds / steps,
        "peak_mb": max(t["peak_mb"] for t in trials),
        "final_loss": trials[-1]["final_loss"],
        "losses": trials[-1]["losses"],
        "padding_share": trials[-1]["padding_share"],
        "packed": trials[-1]["packed"],
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def versions() -> dict:
    import importlib.metadata as md

    from gemma_helpers import env

    out = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "cpu": cpu_model(),
           "cpu_bf16_native": env.cpu_bf16_native()}
    for pkg in ("torch", "transformers", "trl", "peft", "bitsandbytes", "unsloth"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    import torch

    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def main(args) -> int:
    import gemma_helpers as gh
    from gemma_helpers.throughput import FLOPS_FORMULA

    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA GPU here: the GPU benchmark (random-weight Gemma 3 1B / Gemma 3n E4B text, 4-bit, "
                  "unsloth vs plain) was not run")
            return 0
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:])
    subjects = [m for m in args.models.split(",")] if args.gpu else args.recipes.split(",")
    report = {"date": date, "command": command, "device": "cuda" if args.gpu else "cpu", "versions": versions(),
              "precision": args.precision, "steps": args.steps, "rounds": args.rounds,
              "tokens": f"real = input tokens that are not padding; the first {args.warmup} step(s) of each run not timed",
              "flops_formula": FLOPS_FORMULA, "loss_tolerance": LOSS_TOLERANCE,
              "compute_dtype": args.compute_dtype, "threads": args.threads or "torch default",
              "load_average_start": load_average(), "recipes": {}}
    name = args.name or ("bench_train_gpu" if args.gpu else "bench_train_float32" if args.compute_dtype == "float32"
                         else "bench_train")
    if args.append and (gh.results.RESULTS / f"{name}.json").exists():  # an earlier run's other recipes stay
        report["recipes"] = gh.results.load(name)["recipes"]
        report["earlier_commands"] = [*gh.results.load(name).get("earlier_commands", []),
                                      gh.results.load(name)["command"]]
    for subject in subjects:
        recipe = args.gpu_recipe if args.gpu else subject
        try:
            recipe_rows(recipe, args)
        except FileNotFoundError as missing:
            print(f"skipping recipe {recipe!r}: {missing} does not exist")
            report["recipes"][subject] = {"skipped": f"{missing} does not exist"}
            continue
        common = ["--recipe", recipe, "--steps", str(args.steps), "--warmup", str(args.warmup),
                  "--precision", args.precision,
                  "--padding-free", args.padding_free, "--compute-dtype", args.compute_dtype, "--persian", args.persian, "--papers", args.papers,
                  "--model", subject if args.gpu else args.model, "--cache", args.cache,
                  *(["--threads", str(args.threads)] if args.threads else []), *(["--gpu"] if args.gpu else [])]
        trials = {"ours": [], "baseline": []}
        peaks = [run_trial(["--trial", "peak", *common])]
        for r in range(args.rounds):
            order = ("ours", "baseline") if r % 2 == 0 else ("baseline", "ours")
            for side in order:
                t = run_trial(["--trial", side, *common])
                trials[side].append(t)
                print(f"  {subject} round {r + 1} {side:8s}: {t['tokens_per_s']:7.1f} tok/s, "
                      f"{t['s_per_step']:6.2f} s/step, peak {t['peak_mb']:7.0f} MiB, loss {t['final_loss']:.4f}",
                      flush=True)
        peaks.append(run_trial(["--trial", "peak", *common]))  # before and after the rounds: the better of the two
        peak = {dtype: max(p[dtype] for p in peaks) for dtype in ("float32", "bfloat16")}
        ours, base = combine(trials["ours"]), combine(trials["baseline"])
        diffs = [abs(a - b) for a, b in zip(ours["losses"], base["losses"])]
        report["recipes"][subject] = {
            "ours_gflops": ours["gflops"], "baseline_gflops": base["gflops"],
            "peak_gflops_fp32": peak["float32"], "peak_gflops_bf16": peak["bfloat16"],
            "ours_share_of_peak": {"fp32": ours["gflops"] / peak["float32"], "bf16": ours["gflops"] / peak["bfloat16"]},
            "baseline_share_of_peak": {"fp32": base["gflops"] / peak["float32"], "bf16": base["gflops"] / peak["bfloat16"]},
            "peak_shape": peaks[0]["shape"], "peaks_measured": peaks,
            "flops_per_step": ours["flops_per_step"], "ours_compute_dtype": ours["compute_dtype"],
            "loss_tolerance": LOSS_TOLERANCE,
            "losses_within_tolerance": bool(diffs) and max(diffs) <= LOSS_TOLERANCE,
            "ours_tps": ours["tps"], "baseline_tps": base["tps"], "ratio": ours["tps"] / base["tps"],
            "ours_peak_mb": ours["peak_mb"], "baseline_peak_mb": base["peak_mb"], "packed": ours["packed"],
            "ours_s_per_step": ours["s_per_step"], "baseline_s_per_step": base["s_per_step"],
            "ours_labelled_tps": ours["labelled_tps"], "baseline_labelled_tps": base["labelled_tps"],
            "ours_final_loss": ours["final_loss"], "baseline_final_loss": base["final_loss"],
            "max_step_loss_diff": max(diffs) if diffs else None,
            "baseline_padding_share": base["padding_share"], "ours_padding_share": ours["padding_share"],
            "command": command, "date": date, "precision": args.precision, "load_average": load_average(),
            "round_ratios": [o["tokens_per_s"] / b["tokens_per_s"] for o, b in zip(trials["ours"], trials["baseline"])],
            "trials": trials,
        }
        gh.results.save(name, report)  # after every recipe: an interrupted run keeps what it measured
    report["load_average_end"] = load_average()
    publish(report, name)
    return 0


def publish(report: dict, name: str) -> None:
    """Save ``report``, print its table and draw its chart."""
    import gemma_helpers as gh

    path = gh.results.save(name, report)
    measured = {s: v for s, v in report["recipes"].items() if "ratio" in v}
    rows = {s: {"ours tok/s": v["ours_tps"], "base tok/s": v["baseline_tps"], "ratio": v["ratio"],
                "ours s/step": v["ours_s_per_step"], "base s/step": v["baseline_s_per_step"],
                "ours peak MiB": round(v["ours_peak_mb"]), "base peak MiB": round(v["baseline_peak_mb"]),
                "ours loss": v["ours_final_loss"], "base loss": v["baseline_final_loss"], "packed": v["packed"],
                **({"ours GFLOP/s": v["ours_gflops"], "base GFLOP/s": v["baseline_gflops"],
                    "peak fp32": v["peak_gflops_fp32"], "peak bf16": v["peak_gflops_bf16"]} if "ours_gflops" in v else {})}
            for s, v in measured.items()}
    print(f"\n{report['command']}\n{report['date']} | tokens: {report['tokens']}")
    for s, v in report["recipes"].items():
        print(f"  {s}: " + (v["skipped"] if "skipped" in v else
                            f"{v['precision']}, {v['command']} | load average {v.get('load_average')}"))
    if rows:
        print(gh.results.table(rows))
        chart = gh.plots.grouped_bars(
            {LABELS[side]: {s: v[f"{side}_tps"] for s, v in measured.items()} for side in ("ours", "baseline")},
            f"{name}.png", title="Training throughput, " + report["device"].upper() + "\nours / baseline: "
            + ", ".join(f"{s} {v['ratio']:.2f}x" for s, v in measured.items()),
            ylabel="real (non-pad) tokens / s")
        print(f"chart {chart.relative_to(ROOT)}")
    print(f"written to {path}")


def collect(names: list[str], into: str) -> int:
    """Gather the recipes of several results files (runs made separately) into one file, table and chart."""
    import gemma_helpers as gh

    parts = [gh.results.load(n) for n in names]
    report = {**parts[0], "command": "python benchmarks/train_throughput.py --collect " + ",".join(names),
              "collected_from": {n: p["command"] for n, p in zip(names, parts)}, "recipes": {}}
    for p in parts:
        report["recipes"].update(p["recipes"])
    publish(report, into)
    return 0


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="xylandia,persian,papers")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is not timed)")
    p.add_argument("--warmup", type=int, default=1, help="leading steps of each run left out of the timing")
    p.add_argument("--append", action="store_true", help="keep the other recipes of an existing results file")
    p.add_argument("--rounds", type=int, default=2, help="runs per side, alternating which side goes first")
    p.add_argument("--precision", choices=("nf4", "float32"), default="nf4",
                   help="nf4: 4-bit NF4 base as notebook 03 trains it; float32: full-precision base")
    p.add_argument("--padding-free", choices=("auto", "on", "off"), default="auto",
                   help="our side's TrainSpec.padding_free (auto = the default)")
    p.add_argument("--compute-dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                   help="our side's TrainSpec.compute_dtype (auto = the default: bfloat16 on a CPU with AVX512-BF16 / AMX)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in each run (0: torch's default)")
    p.add_argument("--persian", default="", help="a JSONL of conversations; default: the persian recipe's data")
    p.add_argument("--papers", default="", help="a JSONL of rows; default: notebook 01's rows of data/papers_sample.json")
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--gpu", action="store_true", help="the GPU path: random-weight real-size models, CUDA only")
    p.add_argument("--models", default="gemma-3-1b,gemma-3n-e4b-text", help="with --gpu")
    p.add_argument("--gpu-recipe", default="persian", help="with --gpu: the rows every model trains on")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "gemma_bench_models"))
    p.add_argument("--name", default="", help="results/chart name (default bench_train[_gpu])")
    p.add_argument("--collect", default="", help="results names to gather into --name (no training)")
    p.add_argument("--trial", choices=("ours", "baseline", "peak"), help=argparse.SUPPRESS)
    p.add_argument("--recipe", help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse()
    if args.trial:
        print(MARK + json.dumps(peak(args) if args.trial == "peak" else trial(args)), flush=True)
    elif args.collect:
        sys.exit(collect(args.collect.split(","), args.name or "bench_train"))
    else:
        sys.exit(main(args))
