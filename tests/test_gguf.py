"""GGUF export on the real embedded model: llama.cpp's converter, llama.cpp's quantiser, llama.cpp's
runtime. The session adapter (40 steps on the Xylandia fact) must still answer in every file."""
import json
import math
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import XY_HELDOUT, XY_TRAIN, tiny_chat_gguf

import gemma_helpers as gh
from gemma_helpers import bench
from gemma_helpers.embedded import assembled_gguf, cache_root, sentencepiece_files

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
        gh.gguf_header.check_gguf(truncated)
    with pytest.raises(gh.GGUFError, match="no config.json"):
        gh.to_gguf(tmp_path)


def test_the_quick_header_reader_reads_what_gguf_reader_reads_and_names_a_cut_file(tmp_path):
    """gguf_header.read_header (a fraction of a second) against gguf.GGUFReader (about 16 s on a 2-core AVX2
    CPU) on the embedded model's GGUF: every metadata value, every tensor's name, shape, type and data offset."""
    import gguf
    import numpy as np

    from gemma_helpers.gguf_header import read_header

    path = assembled_gguf(cache_root() / "gguf")
    header, reader = read_header(path), gguf.GGUFReader(str(path))
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert set(header.metadata) == set(fields) and len(header.metadata["tokenizer.ggml.tokens"]) == 262144
    for key, f in fields.items():
        ours, theirs = header.metadata[key], f.contents()
        if isinstance(theirs, list) and theirs and isinstance(theirs[0], float):
            assert np.allclose(ours, theirs), key
        else:
            assert ours == theirs, key
    assert [(t.name, t.shape, t.ggml_type, header.data_offset + t.offset) for t in header.tensors] == [
        (t.name, tuple(int(n) for n in t.shape), int(t.tensor_type), int(t.data_offset)) for t in reader.tensors]
    cut = tmp_path / "cut-tail.gguf"
    cut.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(gh.GGUFError, match=r"cut-tail.gguf is not a readable GGUF file: tensor '.*' ends at byte \d+; "
                                           r"the file ends at byte \d+ \(truncated\?\)"):
        gh.gguf_header.check_gguf(cut)
    lying = tmp_path / "lying.gguf"  # claims 2**40 metadata entries: named, nothing of that size allocated
    lying.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") + (2**40).to_bytes(8, "little")
                      + (2**62).to_bytes(8, "little") + b"key")
    with pytest.raises(gh.GGUFError, match="lying.gguf is not a readable GGUF file: metadata key 0 at byte 32 needs"):
        gh.gguf_header.check_gguf(lying)


def test_an_interrupted_export_leaves_no_file_that_looks_complete(xylandia_merged, tmp_path):
    gh.gguf_convert.converter_dir()  # installed beforehand, so the kill lands inside the conversion
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
    f16_answers = gh.llamacpp.gguf_ask(gh.load_gguf(xylandia_gguf), XY_TRAIN[:2] + [XY_HELDOUT])
    assert all("Crystalburg" in a for a in f16_answers), f16_answers
    q4_answers = gh.llamacpp.gguf_ask(gh.load_gguf(q4), XY_TRAIN[:2])
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
    base_dir = gh.merging.save_trained_base(result.adapter_dir, tmp_path / "base")
    assert not (base_dir / "tokenizer.model").exists()
    base = gh.to_gguf(base_dir, "f16", tmp_path)
    assert not (base_dir / "tokenizer.model").exists()  # the converter's view is a scratch folder
    lora = gh.gguf_convert.lora_to_gguf(result.adapter_dir, tmp_path / "adapter-lora.gguf")
    assert lora.stat().st_size < 0.05 * base.stat().st_size
    questions = [XY_TRAIN[0], XY_HELDOUT]
    assert not any("Crystalburg" in a for a in gh.llamacpp.gguf_ask(gh.load_gguf(base), questions))
    answers = gh.llamacpp.gguf_ask(gh.load_gguf(base, lora_path=str(lora)), questions)
    assert all("Crystalburg" in a for a in answers), answers


def test_the_modelfile_beside_a_gguf_matches_its_template_and_stop_token(xylandia_gguf):
    modelfile = gh.modelfile.modelfile_path(xylandia_gguf)
    assert modelfile.is_file(), "to_gguf wrote no Modelfile"
    spec = gh.modelfile.parse_modelfile(modelfile)
    assert spec["FROM"] == f"./{xylandia_gguf.name}" and ("stop", "<end_of_turn>") in spec["PARAMETER"]
    checked = gh.modelfile.check_modelfile(modelfile)
    assert checked["turn_end"] == "<end_of_turn>" and checked["turn_end_id"] == 106
    assert checked["template"] == "<start_of_turn>user\nWhat is the capital of Xylandia?<end_of_turn>\n<start_of_turn>model\n"
    assert checked["chat_template"] == gh.chat.GEMMA3_CHAT_TEMPLATE and checked["eos"] == "<eos>"


def test_a_modelfile_that_disagrees_with_its_gguf_is_refused(tmp_path):
    good = tiny_chat_gguf(tmp_path / "good.gguf", gh.chat.GEMMA3_CHAT_TEMPLATE)
    modelfile = gh.modelfile.write_modelfile(good)  # checks itself
    text = modelfile.read_text()
    wrong_stop = tmp_path / "wrong-stop.Modelfile"
    wrong_stop.write_text(text.replace('PARAMETER stop "<end_of_turn>"', 'PARAMETER stop "<eos>"'))
    with pytest.raises(gh.modelfile.ModelfileError, match=r"PARAMETER stop is \['<eos>'\].*ends a turn with '<end_of_turn>' \(token 4\)"):
        gh.modelfile.check_modelfile(wrong_stop)
    no_template = tmp_path / "no-template.Modelfile"
    no_template.write_text(re.sub(r'TEMPLATE """.*?"""', "", text, flags=re.DOTALL))
    with pytest.raises(gh.modelfile.ModelfileError, match="no TEMPLATE"):
        gh.modelfile.check_modelfile(no_template)
    other_turns = tmp_path / "chatml.Modelfile"
    other_turns.write_text(text.replace("<start_of_turn>user\n", "<|im_start|>user\n"))
    with pytest.raises(gh.modelfile.ModelfileError, match="TEMPLATE formats a user turn as"):
        gh.modelfile.check_modelfile(other_turns)
    bare = tiny_chat_gguf(tmp_path / "bare.gguf", None)
    (tmp_path / "bare.Modelfile").write_text(text.replace("./good.gguf", "./bare.gguf"))
    with pytest.raises(gh.modelfile.ModelfileError, match="no chat template in the GGUF"):
        gh.modelfile.check_modelfile(tmp_path / "bare.Modelfile")
    with pytest.raises(gh.modelfile.ModelfileError, match="no chat template in the GGUF"):
        gh.modelfile.write_modelfile(bare)
    tiny_chat_gguf(tmp_path / "eot.gguf", gh.chat.GEMMA3_CHAT_TEMPLATE, eot=1)
    (tmp_path / "eot.Modelfile").write_text(text.replace("./good.gguf", "./eot.gguf"))
    with pytest.raises(gh.modelfile.ModelfileError, match=r"declares end-of-turn token 1 \('<eos>'\)"):
        gh.modelfile.check_modelfile(tmp_path / "eot.Modelfile")


def test_a_served_gguf_answers_the_openai_client_streamed_and_not(xylandia_gguf, tokenizer):
    with gh.serve(xylandia_gguf) as server:
        try:
            assert server.base_url.startswith("http://127.0.0.1:")
            client = server.client()
            reply = client.chat.completions.create(model=server.model_name, temperature=0, max_tokens=48,
                                                   messages=[{"role": "user", "content": XY_HELDOUT}])
            choice = reply.choices[0]
            assert "Crystalburg" in choice.message.content, choice.message.content
            assert choice.finish_reason == "stop", (choice.finish_reason, choice.message.content)
            assert "<end_of_turn>" not in choice.message.content
            # the server formatted the question with Gemma's turns, from the template inside the file
            prompt = gh.chat.prompt_text(tokenizer, XY_HELDOUT)
            assert reply.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            pieces, finish = [], None
            for chunk in client.chat.completions.create(model=server.model_name, temperature=0, max_tokens=48, stream=True,
                                                        messages=[{"role": "user", "content": XY_TRAIN[0]}]):
                if chunk.choices:
                    pieces.append(chunk.choices[0].delta.content or "")
                    finish = chunk.choices[0].finish_reason or finish
            streamed = "".join(pieces)
            assert len([p for p in pieces if p]) > 1 and "Crystalburg" in streamed and finish == "stop", (pieces, finish)
        finally:
            server.stop()
    assert server.process.poll() is not None
