#!/usr/bin/env python3
"""Golden data for the Gemma 3 tokenizer (SentencePiece BPE with byte fallback) in tests/test_tokenizer.cpp
and the Gemma chat formats in tests/test_chat_template.cpp.

  /work/venv/bin/python tests/data/tokenizer/gen_golden_gemma3.py   (from the repo root; needs
  ~/.cache/retort/models/gemma3-270m.gguf or $RETORT_HOME/models/gemma3-270m.gguf; a few minutes,
  most of it transformers building its tokenizer from the GGUF)

References (independent of retort and of each other):
  * Google's `sentencepiece` library, running a ModelProto built here from the GGUF's tokens, scores and
    token types (BPE, byte_fallback, identity normalizer with spaces escaped to U+2581, no dummy prefix).
    The GGUF spells Gemma's user-defined whitespace pieces with real spaces ("  "); SentencePiece's own
    model spells them "▁▁", so they are respelled back. SentencePiece never parses control tokens
    (<start_of_turn>, <eos>, ...) in text, so with special parsing on, the text is first cut at control
    tokens, leftmost-longest, and each stretch encoded on its own.
  * transformers' GGUF conversion (AutoTokenizer.from_pretrained(..., gguf_file=...)), i.e. HF `tokenizers`.
    It agrees with SentencePiece except on runs of more than 31 spaces: it merges the whitespace pieces
    as BPE pieces (40 spaces -> 16 + 24) where SentencePiece and llama.cpp match the longest
    user-defined piece first (40 -> 31 + 9). The golden `ids` follow SentencePiece, the tokenizer
    Gemma was trained with; HF's answer is kept as ids_transformers_gguf where it differs, and the
    script fails if they differ anywhere else.
  * Invalid UTF-8 (neither library takes it): each invalid byte is its <0xXX> token and the valid runs
    between are encoded as above (an invalid byte can never be part of a merged piece).

Writes, next to this script:
  gemma3/golden.jsonl   per corpus.jsonl case: i, ids (control tokens parsed), ids_raw (control-token text
                        encoded as text), decode, decode_skip (HF decode, skip_special_tokens); for invalid
                        input, decode = the ids' bytes as text with one U+FFFD per maximal ill-formed
                        subpart (what retort's StreamDecoder gives; HF writes one per byte token)
  gemma3/cases.jsonl    the same for Gemma-specific cases (text or hex): whitespace-run tokens, HTML
                        tags, control tokens, literal "▁", byte-token look-alikes
  chat/gemma3.jinja     the Gemma 3 chat template (google/gemma-3-*-it tokenizer_config.json)
  chat/gemma_golden.jsonl  apply_chat_template renders of the Gemma 3 and Gemma 1/2 (chat/gemma.jinja)
                        templates over gen_golden.CONVERSATIONS (or the exception they raise), with the
                        ids of each render (HF, control tokens parsed)
  spm_tiny/tokenizer.gguf  a hand-made SentencePiece vocabulary (TINY_* below: Gemma's token kinds, scores
                        chosen so the merge order is checkable by hand), vocab only, written by the `gguf`
                        package; lets the tests run without the model
  spm_tiny/golden.jsonl SentencePiece's ids for TINY_CASES on it (text, ids, ids_raw)
  spm_tiny/tokenizer.json the same vocabulary in Hugging Face's form as retort's export writes it (Gemma's
                        pipeline: BPE + byte_fallback, normalizer " " -> "\u2581"; merges from transformers'
                        generate_merges over the normal pieces and their scores; user-defined pieces as
                        normalized added tokens); the script checks that HF `tokenizers` on it gives
                        SentencePiece's ids on every TINY_CASE, so it is a reference for
                        Tokenizer::from_hf_json and for the merges retort derives from the GGUF
"""
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from corpus_cases import CASES  # noqa: E402
from gen_golden import CONVERSATIONS, GEMMA, case_bytes, split_valid  # noqa: E402

# Gemma-specific cases (the shared corpus has no Gemma tokens).
GEMMA_CASES = [
    "<bos><start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nWrite a poem.<end_of_turn>\n<start_of_turn>model\nRoses are red.<end_of_turn><eos>",
    "<eos>", "<bos>", "<pad>", "<unk>", "<mask>", "<unused0>", "<unused6241>", "<start_of_image>", "[multimodal]",
    "a<start_of_turn>b", "<start_of_turn", "start_of_turn>", "<<start_of_turn>>", "<end_of_turn><end_of_turn>",
    "x<eos>y<bos>z",
    "<b>bold</b> <i>it</i> <code>x = 1</code>", "<table><tr><td>1</td></tr></table>", "<s>strike</s>", "</s>",
    "<h1>Title</h1>\n<p>para</p>", "<div><span>a</span></div>",
    "a  b", "x   y", " " * 31, " " * 32, " " * 40, " " * 64, " " * 100, "a" + " " * 33 + "b",
    "\n" * 31, "\n" * 32, "\n" * 45, "\t" * 31, "\t" * 40, "\t \t \n \n", "  \n  \n\t\t", " \n", "\n ",
    "def f(x):\n    if x:\n        return 1\n\treturn 2\n",
    "    indented four\n            twelve\n", "\r\n\r\n", "trailing   ", "   leading",
    "\u2581", "\u2581\u2581", " \u2581 ", "a\u2581b", "\u2581hello", "x \u2581",
    "<0x41>", "<0xFF>", "<0x0A>", "\x00\x01\x02\x7f",
    "\u0f3a\u0f3b", "\U0001f600\U0001f600", "\U0001fae8", "\U000e0041", "\ufffd", "\ufeffBOM",
    "नमस्ते दुनिया", "مرحبا بالعالم", "こんにちは世界", "안녕하세요", "Ελληνικά", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "3.14159 1,000,000 0x1F 1e-9 2024-01-01",
    "the the the the the the the the",
    b"\xff\xfe abc", b"<start_of_turn>\xffuser", b"  \xff  ", b"\n\xc3\n", b"\xe2\x96", b"\xe2\x96\x81\xe2\x96",
    b"<b>\x80</b>", b"\xed\xa0\x80", b"a\xf0\x9f\x98",
]

GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

# Conversations beyond gen_golden's: the ones the Gemma formats treat specially.
GEMMA_CONVERSATIONS = [
    [{"role": "system", "content": "  Keep the system's own spaces.  "}, {"role": "user", "content": " hi "}],
    [{"role": "system", "content": "Only a system message."}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"},
     {"role": "user", "content": "u2"}, {"role": "assistant", "content": " a2\n"}],
    [{"role": "user", "content": "q"}, {"role": "tool", "content": "42"}],
]


# spm_tiny: control tokens, the 256 byte tokens, then these normal pieces (score: higher merges first)
# and user-defined pieces (a run of spaces spelled with real spaces, as the Gemma GGUF does).
TINY_CONTROL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
TINY_NORMAL = [("\u2581", -10), ("a", -11), ("b", -12), ("c", -13), ("ab", -3), ("bc", -2), ("\u2581a", -1),
               ("aa", -5), ("e", -14), ("\u2581\u2581a", -4)]
TINY_USER = ["  ", "\n", "<b>"]
TINY_CASES = ["abc", "ab", " a", "aaa", "aaaa", "bcab", "a  b", "a   b", "   a", "x", "\u00e9", "<b>a</b>", "a\nb",
              "  \n  ", "\u2581a", " \u2581", "<start_of_turn>user\nab<end_of_turn>\n", "<eos>e", "<bos", "",
              "\U0001f600", "cba cab"]


def tiny_vocab():
    tokens = TINY_CONTROL + ["<0x%02X>" % b for b in range(256)] + [t for t, _ in TINY_NORMAL] + TINY_USER
    types = ([2 if t == "<unk>" else 3 for t in TINY_CONTROL] + [6] * 256 + [1] * len(TINY_NORMAL) +
             [4] * len(TINY_USER))
    scores = [0.0] * (len(TINY_CONTROL) + 256) + [float(s) for _, s in TINY_NORMAL] + [0.0] * len(TINY_USER)
    return tokens, types, scores


def tiny():
    import gguf
    tokens, types, scores = tiny_vocab()
    d = os.path.join(HERE, "spm_tiny")
    os.makedirs(d, exist_ok=True)
    w = gguf.GGUFWriter(os.path.join(d, "tokenizer.gguf"), arch="gemma3")
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(tokens.index("<bos>"))
    w.add_eos_token_id(tokens.index("<eos>"))
    w.add_unk_token_id(tokens.index("<unk>"))
    w.add_pad_token_id(tokens.index("<pad>"))
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    sp = sentencepiece_model(tokens, types, scores)
    control = sorted(TINY_CONTROL, key=len, reverse=True)
    with open(os.path.join(d, "golden.jsonl"), "w") as f:
        for c in TINY_CASES:
            rec = {"text": c, "ids": sp_encode(sp, control, c, True), "ids_raw": sp_encode(sp, control, c, False)}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    hf_json = hf_tokenizer_json(tokens, types, scores)
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        f.write(json.dumps(hf_json, ensure_ascii=False))
    from tokenizers import Tokenizer
    hf = Tokenizer.from_str(json.dumps(hf_json))
    for c in TINY_CASES:
        for special in (True, False):
            hf.encode_special_tokens = not special
            got = hf.encode(c, add_special_tokens=False).ids
            assert got == sp_encode(sp, control, c, special), (c, special, got)


def hf_tokenizer_json(tokens, types, scores):
    """A SentencePiece vocabulary (GGUF tokens, types, scores) as a Hugging Face tokenizer.json shaped like
    Gemma's, the form retort's export writes (src/retort/distill/export.cpp spm_tokenizer_json)."""
    from transformers.tokenization_utils_base import generate_merges
    normal = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 1}
    merges = generate_merges(normal, {t: scores[i] for t, i in normal.items()})
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": ty == 4, "special": ty != 4}
             for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (2, 3, 4)]
    bos = "<bos>"
    seq = lambda name, type_id: {"Sequence": {"id": name, "type_id": type_id}}  # noqa: E731
    special = lambda type_id: {"SpecialToken": {"id": bos, "type_id": type_id}}  # noqa: E731
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
                          "invert": False},
        "post_processor": {"type": "TemplateProcessing", "single": [special(0), seq("A", 0)],
                           "pair": [special(0), seq("A", 0), special(1), seq("B", 1)],
                           "special_tokens": {bos: {"id": bos, "ids": [tokens.index(bos)], "tokens": [bos]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": [list(m) for m in merges]},
    }


def sp_encode(sp, control, text, parse_special):
    """SentencePiece ids of `text`; with parse_special, cut at control tokens (leftmost-longest) first."""
    if not parse_special:
        return sp.encode(text)
    ids, pos = [], 0
    for m in re.finditer("|".join(re.escape(t) for t in control), text):  # control is longest first
        ids += sp.encode(text[pos:m.start()]) + [sp.piece_to_id(m.group())]
        pos = m.end()
    return ids + sp.encode(text[pos:])


def gguf_path():
    home = os.environ.get("RETORT_HOME", os.path.expanduser("~/.cache/retort"))
    return os.path.join(home, "models", "gemma3-270m.gguf")


def read_vocab(path):
    import gguf
    r = gguf.GGUFReader(path)
    f = r.fields
    assert f["tokenizer.ggml.model"].contents() == "llama", f["tokenizer.ggml.model"].contents()
    assert f["tokenizer.ggml.add_space_prefix"].contents() is False
    return (f["tokenizer.ggml.tokens"].contents(), f["tokenizer.ggml.token_type"].contents(),
            f["tokenizer.ggml.scores"].contents())


def sentencepiece_model(tokens, types, scores):
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 3, 2, 1, 0
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = False
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for t, ty, s in zip(tokens, types, scores):
        p = m.pieces.add()
        p.piece = "\u2581" * len(t) if t and not t.strip(" ") else t  # "  " -> "▁▁"
        p.score = s
        p.type = ty  # llama.cpp's token types are SentencePiece's piece types
    return spm.SentencePieceProcessor(model_proto=m.SerializeToString())


class Reference:
    def __init__(self, path):
        from transformers import AutoTokenizer
        tokens, types, scores = read_vocab(path)
        self.sp = sentencepiece_model(tokens, types, scores)
        self.control = sorted((t for t, ty in zip(tokens, types) if ty == 3), key=len, reverse=True)
        self.tokens = tokens
        self.byte_id = {int(t[3:5], 16): i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 6}
        self.byte_of = {i: b for b, i in self.byte_id.items()}
        self.hf_full = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
        self.hf = self.hf_full.backend_tokenizer

    def sp_valid(self, text, parse_special):
        return sp_encode(self.sp, self.control, text, parse_special)

    def hf_valid(self, text, parse_special):
        self.hf.encode_special_tokens = not parse_special
        ids = self.hf.encode(text, add_special_tokens=False).ids
        self.hf.encode_special_tokens = False
        return ids

    def encode(self, b, parse_special, encoder):
        ids = []
        for ok, piece in split_valid(b):
            ids += encoder(piece.decode("utf-8"), parse_special) if ok else [self.byte_id[x] for x in piece]
        return ids

    def record(self, c):
        b = case_bytes(c)
        rec = {}
        for key, special in (("ids", True), ("ids_raw", False)):
            ids = self.encode(b, special, self.sp_valid)
            hf = self.encode(b, special, self.hf_valid)
            rec[key] = ids
            if hf != ids:
                # Only runs of more than 31 spaces may differ (see the module docstring).
                assert re.search(" {32,}", b.decode("utf-8", "replace")), (c, ids, hf)
                rec[key + "_transformers_gguf"] = hf
        if isinstance(c, str):
            rec["decode"] = self.hf.decode(rec["ids"], skip_special_tokens=False)
        else:
            # The ids' bytes (a <0xXX> token its byte, a piece its text with "▁" as a space), decoded with
            # one U+FFFD per maximal ill-formed subpart as retort's StreamDecoder does; HF's ByteFallback
            # decoder writes one per byte token instead.
            raw = b"".join(bytes([self.byte_of[i]]) if i in self.byte_of else self.tokens[i].replace("\u2581", " ").encode()
                           for i in rec["ids"])
            rec["decode"] = raw.decode("utf-8", errors="replace")
        rec["decode_skip"] = self.hf.decode(rec["ids"], skip_special_tokens=True)
        return rec


def chat(ref):
    with open(os.path.join(HERE, "chat", "gemma3.jinja"), "w") as f:
        f.write(GEMMA3)
    with open(os.path.join(HERE, "chat", "gemma.jinja")) as f:
        assert f.read() == GEMMA  # written by gen_golden.py
    tok = ref.hf_full
    with open(os.path.join(HERE, "chat", "gemma_golden.jsonl"), "w") as f:
        for name, src in (("gemma3", GEMMA3), ("gemma", GEMMA)):
            for msgs in CONVERSATIONS + GEMMA_CONVERSATIONS:
                for gen in (True, False):
                    rec = {"template": name, "messages": msgs, "add_generation_prompt": gen}
                    try:
                        r = tok.apply_chat_template(msgs, chat_template=src, tokenize=False, add_generation_prompt=gen)
                        rec["render"] = r
                        rec["ids"] = ref.hf_valid(r, True)
                        assert rec["ids"] == ref.sp_valid(r, True)
                    except Exception as e:  # jinja2 TemplateError from raise_exception
                        rec["error"] = str(e)
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def main():
    tiny()
    path = gguf_path()
    ref = Reference(path)
    d = os.path.join(HERE, "gemma3")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "golden.jsonl"), "w") as f:
        for i, c in enumerate(CASES):
            f.write(json.dumps({"i": i, **ref.record(c)}, ensure_ascii=False) + "\n")
    with open(os.path.join(d, "cases.jsonl"), "w") as f:
        for c in GEMMA_CASES:
            head = {"hex": c.hex()} if isinstance(c, bytes) else {"text": c}
            f.write(json.dumps({**head, **ref.record(c)}, ensure_ascii=False) + "\n")
    chat(ref)


if __name__ == "__main__":
    main()
