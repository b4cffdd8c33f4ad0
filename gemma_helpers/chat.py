"""Gemma turns: the chat template, message validation, and labels on the answers only.

A training row is ``{"messages": [{"role": ..., "content": ...}, ...]}`` with roles
``system`` (optional, first), ``user`` and ``assistant`` alternating, or ``{"text": ...}``
for plain text (general-text replay), where every token is trained on, or
``{"prompt": ..., "completion": ...}`` for plain text without chat turns (an instruction
template), where the completion and the ``<eos>`` after it are trained on. The base Gemma 3
checkpoint ships no chat template, so :func:`install_chat_template` puts Gemma's on the
tokenizer. Labels are -100 everywhere except on the assistant turns (their text and the
``<end_of_turn>`` that ends them), so neither the prompt nor padding is trained on.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
END_OF_TURN = "<end_of_turn>"

# Gemma 3's chat template (as shipped with the instruction-tuned checkpoints): a system
# message is folded into the first user turn; "assistant" is written as "model".
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = \"\" -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}"
    "{{ raise_exception(\"Invalid content type\") }}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)


class DataError(ValueError):
    """A training row that cannot be used; the message names the row index and the field."""

    def __init__(self, row: int, field: str, problem: str):
        self.row, self.field, self.problem = row, field, problem
        super().__init__(f"row {row}: field '{field}' {problem}")


def install_chat_template(tokenizer) -> None:
    """Give a tokenizer Gemma's chat template unless it already has one."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE


def qa_rows(pairs: Iterable[tuple[str, str]], system: str | None = None) -> list[dict]:
    """``[(question, answer), ...]`` as single-exchange training rows."""
    rows = []
    for question, answer in pairs:
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"messages": messages})
    return rows


def validate_rows(rows: Sequence[dict]) -> None:
    """Raise :class:`DataError` for the first row that is not a usable conversation."""
    for i, row in enumerate(rows):
        if isinstance(row, dict) and "prompt" in row and "messages" not in row:
            for name in ("prompt", "completion"):
                if not isinstance(row.get(name), str) or not row[name].strip():
                    raise DataError(i, name, "is missing or empty")
            continue
        if isinstance(row, dict) and "text" in row and "messages" not in row:
            if not isinstance(row["text"], str) or not row["text"].strip():
                raise DataError(i, "text", "is missing or empty")
            continue
        if not isinstance(row, dict) or "messages" not in row:
            raise DataError(i, "messages", "is missing")
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(i, "messages", "must be a non-empty list of {role, content}")
        expected = "user"
        for j, msg in enumerate(messages):
            where = f"messages[{j}]"
            if not isinstance(msg, dict):
                raise DataError(i, where, "is not a {role, content} mapping")
            role = msg.get("role")
            if role is None:
                raise DataError(i, f"{where}.role", "is missing")
            if role not in ROLES:
                raise DataError(i, f"{where}.role", f"has unknown role {role!r} (expected one of {ROLES})")
            content = msg.get("content")
            if content is None or (isinstance(content, str) and not content.strip()):
                raise DataError(i, f"{where}.content", "is missing or empty")
            if role == "system":
                if j != 0:
                    raise DataError(i, f"{where}.role", "'system' may only be the first turn")
                continue
            if role != expected:
                raise DataError(i, f"{where}.role", f"is {role!r} where {expected!r} was expected (turns must alternate)")
            expected = "assistant" if role == "user" else "user"
        if messages[-1].get("role") != "assistant":
            raise DataError(i, f"messages[{len(messages) - 1}].role", "must be 'assistant': the last turn is what is trained on")


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def prompt_text(tokenizer, question: str, system: str | None = None) -> str:
    """The generation prompt for one user question."""
    messages = [{"role": "system", "content": system}] if system else []
    return render(tokenizer, messages + [{"role": "user", "content": question}], add_generation_prompt=True)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of every assistant answer.

    Each span runs from after ``<start_of_turn>model\\n`` to the end of that turn's
    ``<end_of_turn>\\n``; it is found by rendering the conversation up to that turn with and
    without the answer, so it follows whatever the template does (trimming, system folding)."""
    full = render(tokenizer, messages)
    spans = []
    for k, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:k], add_generation_prompt=True)
        through = render(tokenizer, messages[: k + 1])
        if not (through.startswith(before) and full.startswith(through)):
            raise ValueError(
                f"chat template renders turn {k} inconsistently: the prompt is not a prefix of the "
                "rendered answer; answer-only labels cannot be placed"
            )
        spans.append((len(before), len(through)))
    return full, spans


def tokenize_row(tokenizer, row: dict, max_length: int | None = None, row_index: int = 0) -> dict:
    """``input_ids``, ``attention_mask`` and ``labels`` (answer tokens only) for one row."""
    if "prompt" in row and "messages" not in row:  # plain prompt + completion: the completion and <eos>
        head = tokenizer.bos_token + row["prompt"]
        text = head + row["completion"] + tokenizer.eos_token
        spans = [(len(head), len(text))]
    elif "messages" not in row:  # plain text: every token after <bos> is a label
        text = tokenizer.bos_token + row["text"]
        spans = [(len(tokenizer.bos_token), len(text))]
    else:
        text, spans = assistant_spans(tokenizer, row["messages"])
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    for t, (s, e) in enumerate(offsets):
        if e > s and any(a <= s and e <= b for a, b in spans):
            labels[t] = ids[t]
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        field = "completion" if "prompt" in row and "messages" not in row else "messages"
        raise DataError(row_index, field, f"has no answer token left to train on (max_length={max_length})")
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def tokenize_rows(tokenizer, rows: Sequence[dict], max_length: int | None = None) -> list[dict]:
    """Validate, then tokenize every row with answer-only labels."""
    validate_rows(rows)
    return [tokenize_row(tokenizer, row, max_length, i) for i, row in enumerate(rows)]


def decode_labels(tokenizer, example: dict) -> str:
    """The text that carries a label: what the model is trained to produce (a masking check)."""
    return tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])
