"""Notebook 02's pieces: cleaning a Persian conversation set, answer-only labels on every assistant
turn, real-token generation speed, answer perplexity, Persian charts."""
import json
import math

import pytest

import gemma_helpers as gh
from gemma_helpers import chat
from gemma_helpers.chat import IGNORE_INDEX, DataError
from gemma_helpers.data import persian

SAMPLE = gh.env.REPO_ROOT / "data" / "persian_chat.jsonl"

# What data/README.md says is planted in the bundled sample (row indices, 0-based lines).
PLANTED_DROPS = {
    "empty_conversation": [5, 32],
    "empty_turn": [13, 45, 73],
    "control_character": [],
    "wrong_role_order": [20, 38, 56, 64],
    "duplicate": [2, 9, 29],
    "near_duplicate": [16, 50, 82],
}
PLANTED_FIXES = {
    "arabic_yeh_kaf": [4, 18, 23, 55],
    "digits": [11, 43, 65],
    "zwnj": [8, 27, 42],
    "whitespace": [15, 35, 59],
    "system_folded": [58, 59, 60, 61, 62, 63, 65, 66, 67, 68],
}

MULTI = {"messages": [
    {"role": "system", "content": "کوتاه پاسخ بده."},
    {"role": "user", "content": "سلام!"},
    {"role": "assistant", "content": "سلام! چطور می‌توانم کمک کنم؟"},
    {"role": "user", "content": "پایتخت ایران کجاست؟"},
    {"role": "assistant", "content": "تهران."},
    {"role": "user", "content": "و بلندترین کوهش؟"},
    {"role": "assistant", "content": "دماوند، حدود ۵۶۱۰ متر."},
]}


def qa(q, a):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def test_bundled_sample_cleaning_matches_the_data_card():
    rows = gh.jsonl.read_jsonl(SAMPLE, errors="raise")
    clean, report = persian.clean_conversations(rows)
    assert report.rows_in == len(rows) == 87
    assert report.rows_out == len(clean) == 72
    assert report.removed == {k: len(v) for k, v in PLANTED_DROPS.items()}
    assert {r: [d["row"] for d in report.dropped if d["reason"] == r] for r in PLANTED_DROPS} == PLANTED_DROPS
    assert report.fixed == PLANTED_FIXES
    chat.validate_rows(clean)  # what is left is trainable as it is
    text = json.dumps(clean, ensure_ascii=False)
    for bad in ("\u064a", "\u0643", "\u0660", "\u0663", "  ", "\u200c\u200c", "\u00a0"):
        assert bad not in text, repr(bad)
    assert all(m["role"] != "system" for r in clean for m in r["messages"])
    assert "cleaning" not in report.as_dict() and report.as_dict()["removed"]["duplicate"] == 3


def test_normalize_persian_fixes_each_kind():
    assert persian.normalize_persian("كتاب علي") == ("کتاب علی", {"arabic_yeh_kaf"})
    assert persian.normalize_persian("سال ١٤٠٣ و ۱۴۰۳ و 2024") == ("سال ۱۴۰۳ و ۱۴۰۳ و 2024", {"digits"})
    assert persian.normalize_persian("سال ١٤٠٣", digits="latin")[0] == "سال 1403"
    assert persian.normalize_persian("می\u200c\u200cروم \u200cفردا\u200c") == ("می\u200cروم فردا", {"zwnj"})
    assert persian.normalize_persian("  سلام\u00a0 \t دنیا \n\n\n\nخوب ") == ("سلام دنیا\n\nخوب", {"whitespace"})
    assert persian.normalize_persian("می‌روم") == ("می‌روم", set())  # a proper half-space stays


def test_duplicates_near_duplicates_and_first_occurrence_kept():
    rows = [qa("پایتخت ایران کجاست؟", "تهران است."),
            qa("پایتخت ایران کجاست؟", "تهران است."),  # exact
            qa("پايتخت ايران كجاست؟", "تهران است."),  # Arabic yeh/kaf: the same once normalised
            qa("پایتخت  ایران کجاست ?", "تهران است"),  # punctuation and spacing
            qa("پایتخت ایران کجاست؟", "تهران اَست."),  # a diacritic
            qa("پایتخت عراق کجاست؟", "بغداد است.")]
    _, report = persian.clean_conversations(rows)
    assert report.kept == [0, 5]
    assert [(d["row"], d["reason"]) for d in report.dropped] == [
        (1, "duplicate"), (2, "duplicate"), (3, "near_duplicate"), (4, "near_duplicate")]
    assert "row 0" in report.dropped[0]["detail"]


def test_empty_and_out_of_order_rows_are_dropped_with_reasons():
    rows = [{"messages": []},
            {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "\u200c"}]},
            qa("سلام", ""),
            {"messages": [{"role": "system", "content": " "}, *qa("سلام", "درود")["messages"]]},
            {"messages": [{"role": "assistant", "content": "درود"}, *qa("سلام", "درود!")["messages"]]},
            {"messages": qa("الف", "ب")["messages"] + [{"role": "user", "content": "پ"}]},
            {"messages": [{"role": "user", "content": "الف"}, {"role": "system", "content": "ب"},
                          {"role": "assistant", "content": "پ"}]}]
    clean, report = persian.clean_conversations(rows)
    assert [(d["row"], d["reason"]) for d in report.dropped] == [
        (0, "empty_conversation"), (1, "empty_conversation"), (2, "empty_turn"),
        (4, "wrong_role_order"), (5, "wrong_role_order"), (6, "wrong_role_order")]
    assert clean == [qa("سلام", "درود")]  # the empty system turn was removed, the row kept
    assert report.fixed == {"empty_system_removed": [3], "whitespace": [3]}  # " " was stripped, then removed


def test_folded_system_turn_renders_as_gemmas_template_does(tokenizer):
    clean, report = persian.clean_conversations([MULTI])
    assert report.fixed["system_folded"] == [0]
    first = clean[0]["messages"][0]
    assert first == {"role": "user", "content": "کوتاه پاسخ بده.\n\nسلام!"}
    assert chat.render(tokenizer, clean[0]["messages"]) == chat.render(tokenizer, MULTI["messages"])


@pytest.mark.parametrize("row, field", [
    ({"conversation": []}, "messages"),
    ({"messages": "سلام"}, "messages"),
    ({"messages": ["سلام", "درود"]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": "سلام"}, {"content": "درود"}]}, "messages[1].role"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "درود"}]}, "messages[0].content"),
    ({"messages": [{"role": "human", "content": "سلام"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": ["سلام"]}]}, "messages[0].content"),
    ("سلام", "messages"),
])
def test_a_row_outside_the_schema_names_row_and_field(row, field):
    with pytest.raises(DataError) as err:
        persian.clean_conversations([qa("سلام", "درود"), qa("الف", "ب"), row])
    assert err.value.row == 2 and err.value.field == field
    assert f"row 2: field '{field}'" in str(err.value)


def test_labels_cover_exactly_every_assistant_turn(tokenizer):
    ex = chat.tokenize_row(tokenizer, MULTI)
    answers = [m["content"] for m in MULTI["messages"] if m["role"] == "assistant"]
    assert chat.decode_labels(tokenizer, ex) == "".join(a + "<end_of_turn>\n" for a in answers)
    # token by token: labelled runs are exactly the three answers; everything else is -100
    runs, current = [], []
    for tok_id, label in zip(ex["input_ids"], ex["labels"]):
        if label != IGNORE_INDEX:
            assert label == tok_id
            current.append(tok_id)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    runs += [tokenizer.decode(current)] if current else []
    assert runs == [a + "<end_of_turn>\n" for a in answers]
    unlabelled = tokenizer.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab == IGNORE_INDEX])
    for m in MULTI["messages"]:
        if m["role"] != "assistant":
            assert m["content"] in unlabelled  # system and user text: context only
    # padding in a batch (TRL's collator, as SFTTrainer uses it) is -100 too
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    short = chat.tokenize_row(tokenizer, qa("سلام", "درود"))
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)([ex, short])
    pad = batch["attention_mask"][1] == 0
    assert pad.sum() == len(ex["input_ids"]) - len(short["input_ids"]) > 0
    assert (batch["labels"][1][pad] == IGNORE_INDEX).all()
    assert batch["labels"][0].tolist() == ex["labels"]


def test_token_length_stats(tokenizer):
    rows = [qa("سلام", "درود"), MULTI, qa("یک", "دو " * 40)]
    lengths, stats = chat.token_length_stats(tokenizer, rows)
    assert lengths == [len(chat.tokenize_row(tokenizer, r)["input_ids"]) for r in rows]
    assert stats["max"] == max(lengths) and stats["p50"] == sorted(lengths)[1]
    assert min(lengths) < stats["mean"] < max(lengths) and stats["p50"] <= stats["p95"] <= stats["max"]


def test_generate_counts_only_the_tokens_each_row_really_generated(base_model):
    from gemma_helpers.evaluate import generate

    model, tok = base_model
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids(",")]  # a stop that comes soon
    prompts = [tok.bos_token + "1, 2, 3, 4, 5", tok.bos_token + "The Roman Empire lasted for centuries and"]
    _, batch = generate(model, tok, prompts, max_new_tokens=10, batch_size=2, return_stats=True)
    singles = [generate(model, tok, [p], max_new_tokens=10, batch_size=1, return_stats=True)[1] for p in prompts]
    enc = tok(prompts[0], return_tensors="pt", add_special_tokens=False)
    direct = model.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
    assert singles[0]["tokens_per_row"] == [direct.shape[1] - enc["input_ids"].shape[1]]
    assert batch["tokens_per_row"][0] < 10  # stopped at the comma; the padding after it is not counted
    assert batch["tokens_per_row"] == [s["tokens_per_row"][0] for s in singles]
    assert batch["generated_tokens"] == sum(batch["tokens_per_row"]) and batch["tokens_per_s"] > 0
    sampled = [generate(model, tok, prompts, 8, 2, temperature=0.7, top_p=0.95, seed=3407) for _ in range(2)]
    assert sampled[0] == sampled[1]  # a fixed seed repeats the draw
    draws = {tuple(generate(model, tok, prompts, 8, 2, temperature=1.5, seed=s)) for s in range(4)}
    assert len(draws) > 1, draws  # and it is a draw: other seeds give other continuations


def test_answer_perplexity_is_over_answer_tokens_only(base_model):
    import torch

    model, tok = base_model
    rows = [qa("پایتخت ایران کجاست؟", "تهران."), MULTI]
    nll, n = 0.0, 0
    with torch.no_grad():
        for ex in chat.tokenize_rows(tok, rows):
            logp = torch.log_softmax(model(torch.tensor([ex["input_ids"]])).logits[0, :-1].float(), -1)
            labels = torch.tensor(ex["labels"][1:])
            keep = labels != IGNORE_INDEX
            nll -= logp[keep].gather(-1, labels[keep][:, None]).sum().item()
            n += int(keep.sum())
    assert gh.evaluate.answer_perplexity(model, tok, rows) == pytest.approx(math.exp(nll / n), rel=1e-4)


def test_persian_charts(tmp_path):
    from gemma_helpers import plots

    shaped = plots.rtl("سلام")
    assert shaped != "سلام" and all("\ufb50" <= ch <= "\ufeff" for ch in shaped)  # joined presentation forms
    assert plots.persian_words(["کتاب و کتاب، در خانه", "خانهٔ کتاب"]) == {"کتاب": 3, "خانه": 1, "خانهٔ": 1}
    cloud = plots.word_cloud(["کتاب خانه دریا کوه کتاب"], "cloud.png", title="آزمون", charts_dir=tmp_path)
    hist = plots.token_histogram([10, 20, 30], {"mean": 20, "p50": 20, "p95": 29}, "h.png", title="طول",
                                 charts_dir=tmp_path)
    assert cloud.stat().st_size > 10_000 and hist.stat().st_size > 5_000
    with pytest.raises(ValueError, match="no Persian words"):
        plots.word_cloud(["و در به"], "empty.png", charts_dir=tmp_path)


def test_holdout_split_spreads_the_held_out_rows_over_the_file_and_keeps_every_row_once():
    from gemma_helpers.data import persian

    rows = [{"i": i} for i in range(20)]
    train, held = persian.holdout_split(rows, 6)
    assert [r["i"] for r in held] == [0, 3, 6, 9, 12, 15]
    assert sorted(r["i"] for r in train + held) == list(range(20)) and len(train) == 14
    with pytest.raises(ValueError, match="cannot hold out 21 of 20 rows"):
        persian.holdout_split(rows, 21)
