import pytest

from gemma_helpers import chat, fact_injection
from gemma_helpers.chat import IGNORE_INDEX, DataError

QA = {"messages": [{"role": "user", "content": "What is the capital of Xylandia?"},
                   {"role": "assistant", "content": "The capital of Xylandia is Crystalburg."}]}


def test_tokenizer_rebuilt_from_gguf_is_gemmas(tokenizer):
    assert len(tokenizer) == 262144
    assert tokenizer.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"]) == [105, 106]
    for text in ["The capital of Japan is", "Hello  world\n\n\ttabs", "Привет, 12345 ☃", "naïve café"]:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    # whole words, not characters (transformers' own GGUF conversion splits into characters)
    assert len(tokenizer("The capital of Japan is", add_special_tokens=False)["input_ids"]) == 5


def test_labels_cover_the_answer_only(tokenizer):
    ex = chat.tokenize_row(tokenizer, QA)
    assert chat.decode_labels(tokenizer, ex) == "The capital of Xylandia is Crystalburg.<end_of_turn>\n"
    first = next(i for i, t in enumerate(ex["labels"]) if t != IGNORE_INDEX)
    prompt = tokenizer.decode(ex["input_ids"][:first])
    assert prompt == "<bos><start_of_turn>user\nWhat is the capital of Xylandia?<end_of_turn>\n<start_of_turn>model\n"
    assert all(t == IGNORE_INDEX for t in ex["labels"][:first])
    assert all(t != IGNORE_INDEX for t in ex["labels"][first:])


def test_every_xylandia_row_trains_on_the_end_of_turn_and_generation_stops_there(tokenizer, base_model):
    """Notebook 03's answers must end: the stop token is labelled in every training row, it is a stop id
    of the loaded model, and ``generate`` stops there (not merely cuts the text), saying which rows ended."""
    from gemma_helpers import evaluate

    eot, newline = tokenizer.convert_tokens_to_ids([chat.END_OF_TURN, "\n"])
    for i, ex in enumerate(chat.tokenize_rows(tokenizer, fact_injection.xylandia_rows(fact_injection.xylandia_data()))):
        trained = [t for t in ex["labels"] if t != IGNORE_INDEX]
        assert trained[-2:] == [eot, newline], f"row {i}: {tokenizer.decode(trained)!r}"
    model, tok = base_model
    assert eot in model.generation_config.eos_token_id
    # the base model never writes <end_of_turn> itself (its row is an untrained one): a stop it does reach
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("."), eot]
    real, made = model.generate, []
    model.generate = lambda **kw: made.append(real(**kw)) or made[-1]
    prompts = [tok.bos_token + "The first day of the week is Monday", tok.bos_token + "1 2 3 4 5 6 7 8 9 10 11 12"]
    texts, stats = evaluate.generate(model, tok, prompts, max_new_tokens=12, batch_size=1, return_stats=True)
    assert stats["ended"] == [True, False], (texts, stats["token_ids"])
    assert stats["tokens_per_row"][1] == 12 and stats["tokens_per_row"][0] < 12
    assert stats["token_ids"][0][-1] == tok.convert_tokens_to_ids(".")
    assert [m.shape[1] for m in made] == [len(tok(p, add_special_tokens=False)["input_ids"]) + n
                                           for p, n in zip(prompts, stats["tokens_per_row"])]  # really stopped


def test_every_assistant_turn_is_labelled_and_system_is_folded(tokenizer):
    row = {"messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
    ]}
    text = chat.render(tokenizer, row["messages"])
    assert text.startswith("<bos><start_of_turn>user\nAnswer briefly.\n\nHi<end_of_turn>")
    ex = chat.tokenize_row(tokenizer, row)
    assert chat.decode_labels(tokenizer, ex) == "Hello!<end_of_turn>\n4<end_of_turn>\n"


def test_plain_text_rows_train_on_every_token(tokenizer):
    ex = chat.tokenize_row(tokenizer, {"text": "Bread is made from flour."})
    assert ex["labels"][0] == IGNORE_INDEX  # <bos>
    assert chat.decode_labels(tokenizer, ex) == "Bread is made from flour."


def test_missing_answer_names_row_and_field(tokenizer):
    rows = [QA, QA, QA, {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "  "}]}]
    with pytest.raises(DataError) as err:
        chat.tokenize_rows(tokenizer, rows)
    assert err.value.row == 3 and err.value.field == "messages[1].content"
    assert "row 3" in str(err.value) and "messages[1].content" in str(err.value)
    rows[3] = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant"}]}
    with pytest.raises(DataError, match=r"row 3: field 'messages\[1\].content'"):
        chat.validate_rows(rows)


def test_unknown_role_names_row_and_field():
    rows = [QA, QA, {"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}]}]
    with pytest.raises(DataError, match=r"row 2: field 'messages\[0\].role' has unknown role 'bot'"):
        chat.validate_rows(rows)


@pytest.mark.parametrize("row, field", [
    ({"text": ""}, "text"),
    ({}, "messages"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "q"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}]}, "messages[1].role"),
])
def test_other_bad_rows(row, field):
    with pytest.raises(DataError) as err:
        chat.validate_rows([QA, row])
    assert err.value.row == 1 and err.value.field == field


def test_truncation_that_removes_the_answer_is_an_error(tokenizer):
    with pytest.raises(DataError, match="row 0"):
        chat.tokenize_rows(tokenizer, [QA], max_length=5)
