"""GGUF export on the real embedded model: llama.cpp's converter, llama.cpp's quantiser, llama.cpp's
runtime. The session adapter (40 steps on the Xylandia fact) must still answer in every file."""
import json
import math
import signal
import subprocess
import sys
import time

import pytest
from conftest import XY_HELDOUT, XY_TRAIN

import gemma_helpers as gh
from gemma_helpers import bench
from gemma_helpers.models import assembled_gguf, cache_root, sentencepiece_files

TEXT = ("The river runs through the middle of the town. In the morning, people walk along its banks to the "
        "market, where farmers sell bread, cheese and fresh vegetables.")


def test_sentencepiece_model_rebuilt_from_the_gguf_encodes_like_the_tokenizer(tmp_path, tokenizer):
    from sentencepiece import SentencePieceProcessor

    model_file, added = sentencepiece_files(assembled_gguf(cache_root() / "gguf"), tmp_path)
    sp = SentencePieceProcessor(model_file=str(model_file))
    assert sp.get_piece_size() == 262144 and json.loads(added.read_text())["\n\n"] == 108
    for text in (XY_HELDOUT, "  two  spaces\n\nand lines  ", "پایتخت ژاپن توکیو است. ۱۲۳", "naïve café 42 🙂"):
        assert sp.encode(text) == tokenizer(text, add_special_tokens=False)["input_ids"], text


def test_a_path_that_is_not_a_gguf_file_is_named(tmp_path):
    with pytest.raises(gh.GGUFError, match="nope.gguf does not exist"):
        gh.load_gguf(tmp_path / "nope.gguf")
    html = tmp_path / "model.gguf"
    html.write_text("<html>404</html>")
    with pytest.raises(gh.GGUFError, match=r"model.gguf is not a GGUF file"):
        gh.quantize(html)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(assembled_gguf(cache_root() / "gguf").read_bytes()[:4096])
    with pytest.raises(gh.GGUFError, match="cut.gguf is not a readable GGUF file"):
        gh.export.check_gguf(truncated)
    with pytest.raises(gh.GGUFError, match="no config.json"):
        gh.to_gguf(tmp_path)


def test_an_interrupted_export_leaves_no_file_that_looks_complete(xylandia_merged, tmp_path):
    gh.export.converter_dir()  # installed beforehand, so the kill lands inside the conversion
    code = f"import gemma_helpers as gh; gh.to_gguf({str(xylandia_merged)!r}, 'f16', {str(tmp_path)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 120
    while time.time() < deadline and not any(tmp_path.glob(".*.tmp-*")):
        time.sleep(0.2)
    assert any(tmp_path.glob(".*.tmp-*")), "the conversion never started writing"
    time.sleep(1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob("*.gguf")) == []


def test_every_gguf_stage_still_knows_the_fact(xylandia_gguf):
    q4 = gh.quantize(xylandia_gguf, "Q4_K_M")
    assert q4.name.endswith("-Q4_K_M.gguf") and q4.parent == xylandia_gguf.parent
    assert q4.stat().st_size < 0.6 * xylandia_gguf.stat().st_size
    # the session adapter is a quick 40-step one: f16 must answer the held-out paraphrase too, the
    # 4-bit file the trained questions (notebook 05 checks >= 4/5 held-out on every stage of its adapter)
    f16_answers = gh.export.gguf_ask(gh.load_gguf(xylandia_gguf), XY_TRAIN[:2] + [XY_HELDOUT])
    assert all("Crystalburg" in a for a in f16_answers), f16_answers
    q4_answers = gh.export.gguf_ask(gh.load_gguf(q4), XY_TRAIN[:2])
    assert all("Crystalburg" in a for a in q4_answers), q4_answers
    assert not list(q4.parent.glob(".*.tmp-*"))


def test_perplexity_is_measured_the_same_way_in_transformers_and_llama_cpp(xylandia_merged, xylandia_gguf):
    work = bench.workload(xylandia_merged, prompt=TEXT, text=TEXT, gen_tokens=8)
    hf = bench.measure_here(bench.Stage("merged", "transformers", str(xylandia_merged)), work)
    gg = bench.measure(bench.Stage("gguf f16", "gguf", str(xylandia_gguf)), work)  # in a fresh process
    assert math.isfinite(hf["perplexity"]) and hf["perplexity"] > 1
    assert abs(gg["perplexity"] / hf["perplexity"] - 1) < 0.02  # f16 weights: the same model, to rounding
    for row in (hf, gg):
        assert row["gen_tps"] > 0 and row["prompt_tps"] > 0 and row["load_s"] > 0
        assert 100 < row["peak_rss_mb"] < 8000 and row["size_mb"] > 100
    assert gg["size_mb"] < hf["size_mb"]  # f16 file vs float32 safetensors


def test_the_adapter_alone_as_a_lora_gguf_on_its_base(xylandia_adapter, tmp_path):
    result, _ = xylandia_adapter
    base_dir = gh.export.trained_base(result.adapter_dir, tmp_path / "base")
    assert not (base_dir / "tokenizer.model").exists()
    base = gh.to_gguf(base_dir, "f16", tmp_path)
    assert not (base_dir / "tokenizer.model").exists()  # the converter's view is a scratch folder
    lora = gh.export.lora_to_gguf(result.adapter_dir, tmp_path / "adapter-lora.gguf")
    assert lora.stat().st_size < 0.05 * base.stat().st_size
    questions = [XY_TRAIN[0], XY_HELDOUT]
    assert not any("Crystalburg" in a for a in gh.export.gguf_ask(gh.load_gguf(base), questions))
    answers = gh.export.gguf_ask(gh.load_gguf(base, lora_path=str(lora)), questions)
    assert all("Crystalburg" in a for a in answers), answers
