"""What a trained adapter becomes for someone else: the hub id of its base, a card written from the run,
a load with plain transformers + peft in a fresh process, and an upload that needs a token."""
import json
import os
import re
import subprocess
import sys

from conftest import XY_HELDOUT, XY_TRAIN

import gemma_helpers as gh


def test_adapter_and_merged_folders_name_the_hub_id_and_still_load_locally(xylandia_adapter, xylandia_merged, embedded_dir):
    result, _ = xylandia_adapter
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == gh.models.EMBEDDED_HUB_ID == "google/gemma-3-270m"
    merged = json.loads((xylandia_merged / "config.json").read_text())
    assert merged["_name_or_path"] == "google/gemma-3-270m"
    for folder in (result.adapter_dir, xylandia_merged):  # no trace of this machine's cache folder
        for name in ("adapter_config.json", "config.json", "README.md", "gemma_helpers.json"):
            if (folder / name).is_file():
                assert str(embedded_dir) not in (folder / name).read_text(), (folder, name)
    # the hub id resolves back to the embedded copy, so loading stays offline
    assert gh.models.resolve("google/gemma-3-270m")[0] == str(embedded_dir)
    assert gh.models.hub_id(str(embedded_dir)) == gh.models.hub_id(gh.EMBEDDED) == "google/gemma-3-270m"
    assert gh.models.hub_id("gemma-3-1b-it") == "unsloth/gemma-3-1b-it"


def test_the_card_holds_the_recipe_the_figures_and_the_limitations(xylandia_adapter, tmp_path):
    import shutil

    result, _ = xylandia_adapter
    folder = shutil.copytree(result.adapter_dir, tmp_path / "adapter")
    card = (folder / "README.md").read_text()  # as train() left it: the recipe, not peft's template
    assert "Model Card for Model ID" not in card and "base_model: google/gemma-3-270m" in card
    for line in ("| LoRA rank r | 16 |", "| LoRA alpha | 32 |", "| LoRA target modules | q_proj, v_proj |",
                 f"| learning rate | {result.spec['learning_rate']} |", "| steps run | 40 |", "| training rows | 20 |"):
        assert line in card, line
    assert re.search(r"\| trained tokens per row \(min / median / max\) \| \d+ / \d+ / \d+ \|", card)
    gh.hub.write_card(folder, notebook="03_xylandia", data="data/xylandia.json",
                      results={"heldout_recall_after": 0.8, "heldout_answers": ["Crystalburg.", "Crystalburg is"]},
                      limitations=["Answers run on after the fact."])
    card = (folder / "README.md").read_text()
    for line in ("| heldout_recall_after | 0.8 |", "| heldout_answers | Crystalburg.; Crystalburg is |",
                 "- Answers run on after the fact.", "| training data | `data/xylandia.json` |",
                 "| data card | `data/README.md` |", "outputs/results/03_xylandia.json"):
        assert line in card, line


def test_plain_transformers_and_peft_in_a_fresh_process_answer_like_gemma_helpers(xylandia_adapter, embedded_dir):
    """The card's own snippet, run in a new interpreter without gemma_helpers, on the local copy of the base."""
    result, tok = xylandia_adapter
    card = (result.adapter_dir / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'from_pretrained("google/gemma-3-270m"' in snippet
    questions = [XY_TRAIN[0], XY_HELDOUT]
    code = "\n".join([
        "import json, sys",
        snippet.replace('"google/gemma-3-270m"', repr(str(embedded_dir))).replace('ADAPTER = "."', f"ADAPTER = {str(result.adapter_dir)!r}")
               .replace("print(", "answers.append("),
    ])
    code = f"answers = []\nfor QUESTION in {questions!r}:\n" + "\n".join("    " + line for line in code.splitlines())
    code += "\nassert not any(m.startswith('gemma_helpers') for m in sys.modules), 'gemma_helpers was imported'"
    code += "\nprint(json.dumps(answers))"
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=result.adapter_dir.parent,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr[-3000:]
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    assert plain == gh.ask(result.model, tok, questions), plain
    assert "Crystalburg" in plain[1]


def test_push_to_hub_needs_a_token_never_runs_in_ci_and_never_prints_the_token(tmp_path, monkeypatch, capsys):
    for key in ("CI", "NBMAKE", "PYTEST_CURRENT_TEST", "HF_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    assert gh.hub.push_to_hub(tmp_path, "someone/adapter") is None
    assert "no HF_TOKEN" in capsys.readouterr().out
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    calls = []

    class FakeApi:  # stands in for the Hub: records what would be uploaded
        def __init__(self, token):
            calls.append(("token", token))

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private))

        def upload_folder(self, folder_path, repo_id, ignore_patterns):
            calls.append(("upload", folder_path, repo_id))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert gh.hub.push_to_hub(tmp_path, "someone/adapter") == "https://huggingface.co/someone/adapter"
    assert calls == [("token", "hf_secret_value_123"), ("create", "someone/adapter", True),
                     ("upload", str(tmp_path), "someone/adapter")]
    monkeypatch.setenv("CI", "true")
    assert gh.hub.push_to_hub(tmp_path, "someone/adapter") is None and len(calls) == 3
    out = capsys.readouterr().out
    assert "skipped under CI" in out and "hf_secret" not in out
