"""Gemma turns: the chat template, message validation, labels on the answers only, and token counts.

A training row is ``{"messages": [{"role": ..., "content": ...}, ...]}`` with roles
``system`` (optional, first), ``user`` and ``assistant`` alternating, or ``{"text": ...}``
for plain text (general-text replay), where every token is trained on, or
``{"prompt": ..., "completion": ...}`` for plain text without chat turns (an instruction
template), where the completion and the ``<eos>`` after it are trained on. The base Gemma 3
checkpoint ships no chat template, so :func:`install_chat_template` puts Gemma's on the
tokenizer. Labels are -100 everywhere except on the assistant turns (their text and the
``<end_of_turn>`` that ends them), so neither the prompt nor padding is trained on
(notebook 02, section 3).

Two ways place the answer span, one per kind of row: :func:`assistant_spans` (text rows, every
assistant turn, found by rendering with and without each answer) and :func:`prompt_and_target`
(multimodal rows, the last turn only, rendered by a processor whose Gemma 4 generation prompt is
not a prefix of the rendered answer). :class:`VisionCollator` stays here rather than in
:mod:`gemma_helpers.data.frames`: it is the labels-on-the-answer rule for any processor row (the
frames of notebook 04, the Gemma 4 stand-in of ``python -m gemma_helpers rehearse``; :func:`gemma_helpers.evaluate.answer_rows`
builds its prompts the same way) and knows nothing about video. Cleaning a Persian set lives in :mod:`gemma_helpers.data.persian`.
"""
from __future__ import annotations

import re
import unicodedata
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
    """A training row that cannot be used; the message names the row index and the field.

    Notebook 02, section 1."""

    def __init__(self, row: int, field: str, problem: str, line: int | None = None):
        self.row, self.field, self.problem, self.line = row, field, problem, line
        where = f"row {row}" if line is None else f"row {row} (file line {line})"
        super().__init__(f"{where}: field '{field}' {problem}")

    def at_line(self, lines) -> DataError:
        """The same error naming the file line of its row too, when ``lines`` (``jsonl.Rows.lines``: the
        file line of each row; blank lines make them differ from row indices) has one."""
        if not lines or self.line is not None or not 0 <= self.row < len(lines):
            return self
        return DataError(self.row, self.field, self.problem, line=lines[self.row])


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


def visible(text: str) -> str:
    """``text`` without what draws nothing: whitespace, control characters (NUL...), format characters
    (ZWNJ, bidi marks such as U+200F, BOM...), unassigned or private code points, Hangul fillers."""
    return "".join(c for c in text if unicodedata.category(c)[0] not in "CZ" and not c.isspace() and c not in _BLANK)


_BLANK = frozenset("\u115f\u1160\u3164\uffa0\u2800")  # letters or symbols that draw nothing


_C0_NAMES = ("NUL SOH STX ETX EOT ENQ ACK BEL BS HT LF VT FF CR SO SI DLE DC1 DC2 DC3 DC4 NAK SYN ETB CAN EM SUB "
             "ESC FS GS RS US").split()
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")  # C0 but tab, LF and CR; surrogates


def character_problem(text: str) -> str | None:
    """Why the string ``text`` holds a character that is not text, or None: a C0 control character other
    than tab, line feed and carriage return (NUL, ESC, form feed...), or a lone surrogate (half of a
    UTF-16 pair, which no UTF-8 file can hold). Names the first one and where it is."""
    found = _NOT_TEXT.search(text)
    if not found:
        return None
    code, at = ord(found.group()), found.start()
    more = len(_NOT_TEXT.findall(text)) - 1
    also = f" (and {more} more)" if more else ""
    if code >= 0xD800:
        return (f"has a lone surrogate U+{code:04X} at character {at}{also}: half of a UTF-16 pair, "
                "not text (no UTF-8 file can hold it)")
    return (f"has a control character U+{code:04X} ({_C0_NAMES[code]}) at character {at}{also}: "
            "only tab, line feed and carriage return are allowed")


def text_problem(value) -> str | None:
    """Why ``value`` is no text a model can learn from (for a message naming the field), or None:
    missing, not a string (an int, a dict, a list), empty, nothing visible (:func:`visible`) in it,
    or a character that is not text (:func:`character_problem`: NUL and other control characters,
    lone surrogates)."""
    if value is None:
        return "is missing"
    if not isinstance(value, str):
        return f"is a {type(value).__name__} ({_preview(value)}), not text"
    if not value.strip():
        return "is empty"
    if not visible(value):
        names = dict.fromkeys(f"U+{ord(c):04X} {unicodedata.name(c, '(no name)')}" for c in value if not c.isspace())
        shown = ", ".join(list(names)[:3]) + (", ..." if len(names) > 3 else "")
        return f"has no visible character (only {shown or 'whitespace'})"
    return character_problem(value)


def _preview(value, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def validate_rows(rows: Sequence[dict]) -> None:
    """Raise :class:`DataError` for the first row that is not a usable conversation: outside the
    schema, a turn with no text to learn from (:func:`text_problem`), roles out of order, or no
    answer last. :func:`gemma_helpers.data.persian.clean_conversations` makes the same checks
    (:func:`check_messages`, :func:`role_problem`), dropping a trainable-schema row instead of raising."""
    try:
        _validate(rows)
    except DataError as err:  # rows read by jsonl.read_jsonl also name the file line
        raise err.at_line(getattr(rows, "lines", None)) from None


def _validate(rows: Sequence[dict]) -> None:
    for i, row in enumerate(rows):
        if isinstance(row, dict) and "messages" not in row and ("prompt" in row or "text" in row):
            for name in ("prompt", "completion") if "prompt" in row else ("text",):
                problem = text_problem(row.get(name))
                if problem:
                    raise DataError(i, name, problem)
            continue
        messages = check_messages(i, row)
        if not messages:
            raise DataError(i, "messages", "must be a non-empty list of {role, content}")
        for j, msg in enumerate(messages):
            problem = text_problem(msg["content"])
            if problem:
                raise DataError(i, f"messages[{j}].content", problem)
        problem = role_problem(messages)
        if problem:
            raise DataError(i, f"messages[{problem[0]}].role", problem[1])


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The chat template applied to messages, as text."""
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


def tokenize_row(tokenizer, row: dict, max_length: int | None = None, row_index: int = 0, strict: bool = True) -> dict:
    """``input_ids``, ``attention_mask`` and ``labels`` (answer tokens only) for one row; a row left
    with no label raises :class:`DataError` unless ``strict=False`` (training's label preflight,
    :func:`gemma_helpers.train.label_preflight`, then names every such row at once)."""
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
    if strict and all(label == IGNORE_INDEX for label in labels):
        field = "completion" if "prompt" in row and "messages" not in row else "messages"
        raise DataError(row_index, field, f"has no answer token left to train on (max_length={max_length})")
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def tokenize_rows(tokenizer, rows: Sequence[dict], max_length: int | None = None, strict: bool = True) -> list[dict]:
    """Validate, then tokenize every row with answer-only labels (``strict``: see :func:`tokenize_row`).

    Notebook 01, section 4; Notebook 02, section 3; Notebook 03, "What is trained on" (also notebook 06)."""
    validate_rows(rows)
    return [tokenize_row(tokenizer, row, max_length, i, strict) for i, row in enumerate(rows)]


def decode_labels(tokenizer, example: dict) -> str:
    """The text that carries a label: what the model is trained to produce (a masking check).

    Notebook 01, section 4; Notebook 02, section 3; Notebook 03, "What is trained on" (also notebook 06)."""
    return tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])


def check_messages(i: int, row) -> list:
    """The messages of row ``i``, or :class:`DataError` naming the field: a dict with a list of
    ``{role, content}`` mappings, each role known, each content text (or None, an empty turn).
    The one schema check: :func:`validate_rows` and the Persian cleaning
    (:func:`gemma_helpers.data.persian.clean_conversations`) both call it."""
    if not isinstance(row, dict) or "messages" not in row:
        raise DataError(i, "messages", "is missing: each row must be {\"messages\": [{role, content}, ...]}")
    messages = row["messages"]
    if not isinstance(messages, list):
        raise DataError(i, "messages", f"is a {type(messages).__name__}, not a list of {{role, content}}")
    for j, msg in enumerate(messages):
        where = f"messages[{j}]"
        if not isinstance(msg, dict):
            raise DataError(i, where, f"is a {type(msg).__name__}, not a {{role, content}} mapping")
        for key in ("role", "content"):
            if key not in msg:
                raise DataError(i, f"{where}.{key}", "is missing")
        if msg["role"] not in ROLES:
            raise DataError(i, f"{where}.role", f"has unknown role {msg['role']!r} (expected one of {ROLES})")
        if msg["content"] is not None and not isinstance(msg["content"], str):
            raise DataError(i, f"{where}.content", f"is a {type(msg['content']).__name__}, not text")
    return messages


def role_problem(messages: list[dict]) -> tuple[int, str] | None:
    """``(turn index, problem)`` for the first turn out of order, or None: an optional system turn
    first, then user and assistant alternating from a user, an assistant last."""
    roles = [m["role"] for m in messages]
    start = 1 if roles[:1] == ["system"] else 0
    for k in range(start, len(roles)):
        want = "user" if (k - start) % 2 == 0 else "assistant"
        if roles[k] == "system":
            return k, "is 'system', which may only be the first turn"
        if roles[k] != want:
            return k, f"is {roles[k]!r} where {want!r} was expected (turns must alternate user/assistant from a user)"
    if len(roles) == start or roles[-1] != "assistant":
        return len(roles) - 1, "must be 'assistant': the last turn is what is trained on"
    return None


def token_length_stats(tokenizer, rows: Sequence[dict]) -> tuple[list[int], dict]:
    """Tokens per rendered conversation, and their mean, p50, p95 and max (notebook 02, section 2).

    Notebook 02, section 2."""
    import numpy as np

    lengths = [len(tokenize_row(tokenizer, row, row_index=i)["input_ids"]) for i, row in enumerate(rows)]
    a = np.asarray(lengths)
    return lengths, {"n": len(lengths), "mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
                     "p95": float(np.percentile(a, 95)), "max": int(a.max())}


def message_text(message: dict) -> str:
    """The text of one turn: a string, or the text parts of a content list joined."""
    content = message["content"]
    return content if isinstance(content, str) else "".join(p.get("text") or "" for p in content if p.get("type") == "text")


def prompt_and_target(processor, messages: list[dict]) -> tuple[str, str]:
    """The generation prompt and the text to train on for a conversation whose last turn is the answer.

    The prompt is what the template renders for generation (thinking off), so training sees exactly
    what inference will. The target is the answer followed by the end-of-turn token the template
    writes after it (``<end_of_turn>`` for Gemma 3 / 3n, ``<turn|>`` for Gemma 4). No prefix of the
    rendered conversation is matched against the prompt: Gemma 4 templates whose generation prompt
    ends in an empty thought channel that a rendered answer lacks would silently mask everything."""
    tok = getattr(processor, "tokenizer", processor)
    answer = message_text(messages[-1]).strip()
    if messages[-1]["role"] != "assistant" or not answer:
        raise ValueError("the last turn must be a non-empty assistant answer")
    template = getattr(processor, "chat_template", None) or ""
    thinking = {"enable_thinking": False} if "enable_thinking" in template else {}  # Gemma 4: thinking off
    prompt = processor.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False, **thinking)
    full = processor.apply_chat_template(messages, tokenize=False, **thinking)
    at = full.rfind(answer)
    if at < 0:
        raise ValueError(f"the chat template does not render the answer {answer!r} verbatim")
    after = tok(full[at + len(answer):], add_special_tokens=False)["input_ids"][:1]
    end = tok.convert_ids_to_tokens(after[0]) if after else None
    if end not in tok.all_special_tokens and end not in getattr(tok, "get_added_vocab", dict)():
        raise ValueError(f"the chat template writes {full[at + len(answer):][:20]!r} after an answer, "
                         "not an end-of-turn token")
    return prompt, answer + end


class VisionCollator:
    """Batches of multimodal rows for a Gemma processor, with labels on the answer only (notebook 04, "Model, and what is trained on").

    Per row: the prompt (images, text and generation prompt) goes through the processor, which
    expands each image into its placeholder tokens; the answer and its end-of-turn token are
    tokenized alone and appended. Labels are -100 on the prompt, every image placeholder and the
    padding; ``token_type_ids`` (Gemma 3 / 3n, required in training) and ``mm_token_type_ids``
    (Gemma 4) are kept and padded with 0. ``load_images(row)`` returns a row's PIL images.

    Notebook 04, "Model, and what is trained on"."""

    def __init__(self, processor, load_images):
        self.processor, self.load_images = processor, load_images
        self.tok = getattr(processor, "tokenizer", processor)

    def encode(self, row: dict) -> dict:
        import torch

        prompt, target = prompt_and_target(self.processor, row["messages"])
        images = self.load_images(row)
        extra = {"images": [images]} if images else {}  # a text-only row also works with a plain tokenizer
        enc = self.processor(text=[prompt], add_special_tokens=False, return_tensors="pt", **extra)
        answer = torch.tensor(self.tok(target, add_special_tokens=False)["input_ids"])
        n = enc["input_ids"].shape[1]
        out = {}
        for key, value in enc.items():
            if torch.is_tensor(value) and value.dim() == 2 and value.shape == (1, n):  # one value per token
                extra = answer if key == "input_ids" else torch.full_like(answer, 1 if key == "attention_mask" else 0)
                out[key] = torch.cat([value[0], extra])
            else:
                out[key] = value
        out["labels"] = torch.cat([torch.full((n,), IGNORE_INDEX), answer])
        return out

    def __call__(self, rows: Sequence[dict]) -> dict:
        import torch

        encoded = [self.encode(r) for r in rows]
        width = max(e["input_ids"].shape[0] for e in encoded)
        pad = {"input_ids": self.tok.pad_token_id, "labels": IGNORE_INDEX}
        batch = {}
        for key in encoded[0]:
            values = [e[key] for e in encoded]
            if key in pad or key in ("attention_mask", "token_type_ids", "mm_token_type_ids"):
                batch[key] = torch.stack([torch.nn.functional.pad(v, (0, width - v.shape[0]), value=pad.get(key, 0))
                                          for v in values])
            elif torch.is_tensor(values[0]):  # per image: pixel_values, image_position_ids, ...
                batch[key] = torch.cat(values)
            else:
                batch[key] = [x for v in values for x in v]
        return batch
