#!/usr/bin/env python3
"""Golden data for tests/test_tokenizer.cpp and tests/test_chat_template.cpp.

References (independent of retort): Hugging Face `tokenizers` for ids and
decodes, `transformers` for the GGUF->tokenizer conversion and for
apply_chat_template, the `gguf` package for writing the synthetic GGUF files.

  python3 tests/data/tokenizer/gen_golden.py        (from the repo root; needs
  ~/.cache/retort/models/smollm2-135m-instruct.gguf or $RETORT_HOME/models/)

Writes, next to this script:
  corpus.jsonl                    one case per line: {"text": str} or {"hex": bytes-as-hex} (invalid UTF-8)
  smollm2/tokenizer.json          transformers' conversion of the SmolLM2 GGUF, with the pre_tokenizer
                                  set to the real SmolLM2 one (see SMOLLM_PRE below), compact JSON
  smollm2/tokenizer_config.json   bos/eos/pad/add_bos_token/chat_template from the same conversion
  smollm2/golden.jsonl            per corpus case: ids (special tokens parsed), ids_raw (special text
                                  encoded as text), decode, decode_skip; ids_transformers_gguf where
                                  transformers' unpatched conversion differs
  llama3/, qwen2/                 synthetic byte-level BPEs trained here with the exact Llama-3 / Qwen2
                                  Split regexes: tokenizer.json, tokenizer.gguf (vocab only), golden.jsonl
  qwen2_nfc/                      the qwen2 tokenizer.json with the real Qwen2 normalizer {"type": "NFC"}
                                  and one normalized added token ("résumé", matched after NFC):
                                  tokenizer.json, golden.jsonl (the qwen2 GGUF is checked against it too)
  chat/*.jinja, chat/golden.jsonl chat templates and apply_chat_template renders

Invalid UTF-8 (HF takes str, so it has no answer): retort cuts the text at each maximal run of
invalid bytes; valid pieces are encoded as usual, each invalid run is one pre-token whose bytes
are byte-level encoded and BPE-merged like any other. The reference below does exactly that with
HF: encode() on valid pieces, model.tokenize() on the byte-level string of each invalid run.
"""
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from corpus_cases import CASES  # noqa: E402

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,  # noqa: E402
                        processors, trainers)

# Real SmolLM2 (HuggingFaceTB/SmolLM2-*) tokenizer.json and llama.cpp's "smollm" pre name both split
# every digit off first; transformers' GGUF conversion (5.x) emits ByteLevel alone, which differs on
# e.g. "  1" (ByteLevel alone gives "Ġ","Ġ1"->"Ġ","Ġ","1"; with Digits "ĠĠ","1").
SMOLLM_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


B2U = bytes_to_unicode()


def split_valid(b):
    """[(is_valid, bytes)] runs: valid UTF-8 pieces and maximal runs of invalid bytes."""
    s = b.decode("utf-8", errors="surrogateescape")
    out = []
    for ch in s:
        bad = 0xDC80 <= ord(ch) <= 0xDCFF
        piece = bytes([ord(ch) - 0xDC00]) if bad else ch.encode("utf-8")
        if out and out[-1][0] == (not bad):
            out[-1] = (out[-1][0], out[-1][1] + piece)
        else:
            out.append((not bad, piece))
    return out


def encode(tok, b, parse_special):
    tok.encode_special_tokens = not parse_special
    ids = []
    for ok, piece in split_valid(b):
        if ok:
            ids += tok.encode(piece.decode("utf-8"), add_special_tokens=False).ids
        else:
            ids += [t.id for t in tok.model.tokenize("".join(B2U[x] for x in piece))]
    tok.encode_special_tokens = False
    return ids


def case_bytes(c):
    return c if isinstance(c, bytes) else c.encode("utf-8")


def added_as_text(tok, ids):
    added = {a.content: i for i, a in tok.get_added_tokens_decoder().items()}
    added_ids = set(added.values())
    out, run = "", []
    for i in ids:
        if i in added_ids:
            out += tok.decode(run, skip_special_tokens=False) + tok.id_to_token(i)
            run = []
        else:
            run.append(i)
    return out + tok.decode(run, skip_special_tokens=False)


def write_golden(tok, path, alt=None):
    with open(path, "w") as f:
        for i, c in enumerate(CASES):
            b = case_bytes(c)
            ids = encode(tok, b, True)
            rec = {"i": i, "ids": ids, "ids_raw": encode(tok, b, False)}
            # For invalid input, decode is HF's lossy (U+FFFD) text; retort's decode() returns the bytes.
            rec["decode"] = tok.decode(ids, skip_special_tokens=False)
            rec["decode_skip"] = tok.decode(ids, skip_special_tokens=True)
            # HF runs added tokens through the ByteLevel decoder as well, which garbles non-ASCII content
            # ("résumé" -> "r\ufffdsum\ufffd"); retort (like llama.cpp) gives an added token's content as is.
            # Reference for that: HF's decode of the runs between added tokens, plus their contents.
            alt_decode = added_as_text(tok, ids)
            if alt_decode != rec["decode"]:
                rec["decode_added_as_text"] = alt_decode
            if isinstance(c, str):
                if alt is not None:
                    alt_ids = alt.encode(c, add_special_tokens=False).ids
                    if alt_ids != ids:
                        rec["ids_transformers_gguf"] = alt_ids
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def write_corpus():
    with open(os.path.join(HERE, "corpus.jsonl"), "w") as f:
        for c in CASES:
            rec = {"hex": c.hex()} if isinstance(c, bytes) else {"text": c}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def smollm2():
    from transformers import AutoTokenizer
    home = os.environ.get("RETORT_HOME", os.path.expanduser("~/.cache/retort"))
    p = os.path.join(home, "models", "smollm2-135m-instruct.gguf")
    t = AutoTokenizer.from_pretrained(os.path.dirname(p), gguf_file=os.path.basename(p))
    conv = json.loads(t.backend_tokenizer.to_str())
    alt = Tokenizer.from_str(json.dumps(conv))
    assert conv["pre_tokenizer"]["type"] == "ByteLevel", conv["pre_tokenizer"]
    conv["pre_tokenizer"] = SMOLLM_PRE
    d = os.path.join(HERE, "smollm2")
    os.makedirs(d, exist_ok=True)
    text = json.dumps(conv, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        f.write(text)
    cfg = {"bos_token": t.bos_token, "eos_token": t.eos_token, "pad_token": t.pad_token,
           "unk_token": t.unk_token, "add_bos_token": False, "chat_template": t.chat_template}
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=1)
    tok = Tokenizer.from_str(text)
    write_golden(tok, os.path.join(d, "golden.jsonl"), alt)
    return t


def training_text():
    rng = random.Random(1234)
    words = ("the of and to in is was for on that with as by at from his her it he she they we you "
             "model token language learning data training teacher student distill watermark retort "
             "function return value class struct include vector string number print self import "
             "hello world quick brown fox lazy dog time people year way day thing man woman child "
             "über café naïve 你好 世界 日本語 Привет мир مرحبا नमस्ते").split()
    out = [c for c in CASES if isinstance(c, str)] * 3
    for _ in range(3000):
        n = rng.randint(3, 20)
        s = " ".join(rng.choice(words) for _ in range(n))
        if rng.random() < 0.5:
            s = s.capitalize() + rng.choice([".", "!", "?", ",", ":", ";"])
        if rng.random() < 0.3:
            s += " " + str(rng.randint(0, 10 ** rng.randint(1, 8)))
        if rng.random() < 0.2:
            s = "    " * rng.randint(1, 3) + s + "\n"
        if rng.random() < 0.1:
            s = s.upper() + " I'M YOU'RE IT'S"
        out.append(s)
    return out


def synthetic(name, regex, specials, pre_name, bos, eos, add_bos, extra):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, min_frequency=2, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(training_text(), trainer=trainer)
    extra(tok)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single=bos + " $A", special_tokens=[(bos, tok.token_to_id(bos))])
    d = os.path.join(HERE, name)
    os.makedirs(d, exist_ok=True)
    conf = json.loads(tok.to_str())
    # Llama-3's real tokenizer.json sets ignore_merges (a pre-token found whole in the vocab is one
    # token, merges or not); llama.cpp does the same for pre "llama-bpe".
    conf["model"]["ignore_merges"] = name == "llama3"
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        f.write(json.dumps(conf, ensure_ascii=False, separators=(",", ":")))
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    write_golden(tok, os.path.join(d, "golden.jsonl"))

    # The same tokenizer as a vocab-only GGUF, the way convert_hf_to_gguf lays it out.
    import gguf
    conf = json.loads(tok.to_str())
    n = tok.get_vocab_size(with_added_tokens=True)
    vocab = tok.get_vocab(with_added_tokens=True)
    inv = {v: k for k, v in vocab.items()}
    added = {a["id"]: a for a in conf["added_tokens"]}
    tokens, types = [], []
    for i in range(n):
        tokens.append(inv[i])
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i]["special"] else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in conf["model"]["merges"]]
    w = gguf.GGUFWriter(os.path.join(d, "tokenizer.gguf"), arch="llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_name)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.token_to_id(bos))
    w.add_eos_token_id(tok.token_to_id(eos))
    w.add_add_bos_token(add_bos)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tok


def qwen2_nfc():
    """Qwen2/Qwen2.5's tokenizer.json has "normalizer": {"type": "NFC"}; the same synthetic BPE with it."""
    tok = Tokenizer.from_file(os.path.join(HERE, "qwen2", "tokenizer.json"))
    tok.normalizer = normalizers.NFC()
    # normalized=True: HF matches it in the NFC text, so "re\u0301sume\u0301" finds it too.
    tok.add_tokens([AddedToken("résumé", special=False, normalized=True)])
    d = os.path.join(HERE, "qwen2_nfc")
    os.makedirs(d, exist_ok=True)
    conf = json.loads(tok.to_str())
    assert conf["normalizer"] == {"type": "NFC"}, conf["normalizer"]
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        f.write(json.dumps(conf, ensure_ascii=False, separators=(",", ":")))
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    write_golden(tok, os.path.join(d, "golden.jsonl"))


def llama3_extra(tok):
    tok.add_tokens([AddedToken("[[TAG]]", special=False, normalized=False)])


def qwen2_extra(tok):
    tok.add_tokens([AddedToken("[[TAG]]", special=False, normalized=False)])
    # lstrip: the match takes the whitespace before it (GGUF cannot say this; see the C++ test).
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False)])


CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

QWEN25 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
          "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
           "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")

GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
         "{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
         "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Where is the treasure?"}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
     {"role": "user", "content": "And 3+3?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "  Tell me a joke.\n"}],
    [{"role": "user", "content": "  spaced content with trailing newline \n\n"}],
    [{"role": "user", "content": "Unicode: café 你好 👋🏽\nand a second line"}],
    [{"role": "user", "content": ""}],
    [{"role": "assistant", "content": "I start the conversation."}, {"role": "user", "content": "ok"}],
]


def chat(smol):
    from transformers import PreTrainedTokenizerFast
    d = os.path.join(HERE, "chat")
    os.makedirs(d, exist_ok=True)
    llama_tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(HERE, "llama3", "tokenizer.json"),
                                        bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    qwen_tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(HERE, "qwen2", "tokenizer.json"),
                                       eos_token="<|im_end|>")
    templates = {"smollm2": (smol.chat_template, smol, "smollm2"), "qwen25": (QWEN25, qwen_tok, "qwen2"),
                 "chatml": (CHATML, qwen_tok, "qwen2"), "llama3": (LLAMA3, llama_tok, "llama3")}
    for name, src in [("qwen25", QWEN25), ("chatml", CHATML), ("llama3", LLAMA3), ("mistral", MISTRAL),
                      ("gemma", GEMMA), ("smollm2", smol.chat_template)]:
        with open(os.path.join(d, name + ".jinja"), "w") as f:
            f.write(src)
    with open(os.path.join(d, "golden.jsonl"), "w") as f:
        for name, (src, tok, tokname) in templates.items():
            for msgs in CONVERSATIONS:
                for gen in (True, False):
                    r = tok.apply_chat_template(msgs, chat_template=src, tokenize=False, add_generation_prompt=gen)
                    f.write(json.dumps({"template": name, "tokenizer": tokname, "messages": msgs,
                                        "add_generation_prompt": gen, "render": r}, ensure_ascii=False) + "\n")


def main():
    write_corpus()
    smol = smollm2()
    synthetic("llama3", LLAMA3_RE,
              ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
               "<|reserved_special_token_0|>"], "llama-bpe", "<|begin_of_text|>", "<|end_of_text|>", True, llama3_extra)
    synthetic("qwen2", QWEN2_RE, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "qwen2",
              "<|endoftext|>", "<|endoftext|>", False, qwen2_extra)
    qwen2_nfc()
    chat(smol)


if __name__ == "__main__":
    main()
