"""Token ids from transformers' CLIPTokenizer for hard text cases, for Tests/OnestepCoreTests/Golden/clip_tokenizer.json.

The tokenizer is loaded the way a pipeline loads it from a repository that ships only vocab.json + merges.txt +
tokenizer_config.json (+ special_tokens_map.json), i.e. no tokenizer.json: transformers 5 then builds its
tokenizers-backed CLIPTokenizer (NFC, whitespace runs to one space, lowercase, CLIP split pattern, byte-level BPE
with </w>) and adds the special tokens (bos, eos, unk, pad) as added tokens matched before normalization.

Each "folder" variant is a tokenizer_config.json (and optionally a special_tokens_map.json) written beside the
shared CLIP vocabulary; the Swift test writes the same files and must give the same ids.

    /work/venv/bin/python scripts/golden/make_tokenizer_golden.py /work/shared/golden/sd_turbo_tiny/tokenizer \
        Tests/OnestepCoreTests/Golden/clip_tokenizer.json
"""
import json, os, shutil, sys, tempfile

import transformers
from transformers import CLIPTokenizer

TEXTS = [
    "a photo of a cat",
    "",
    "   ",
    # accents: precomposed and decomposed (NFC must join them), and case
    "naïve café résumé",
    "nai\u0308ve cafe\u0301 re\u0301sume\u0301",
    "ÜNÏCÖDÉ Ångström Øre",
    "\u0301starts with a combining mark",
    # emoji (single, ZWJ sequence, skin tone, flag, variation selector)
    "emoji 🐱🚀 party 🎉",
    "family 👨‍👩‍👧 thumbs 👍🏽 flag 🇫🇷 rainbow 🏳️‍🌈 heart ❤️",
    # CJK, Hangul, Arabic, Hindi, Thai, Cyrillic, Greek
    "中文 日本語のテキスト 한국어",
    "مرحبا بالعالم हिन्दी ภาษาไทย Привет МИР",
    "ΟΔΟΣ σοφός ΣΊΣΥΦΟΣ",
    # special lowercase mappings and compatibility characters (no NFKC: kept as they are)
    "İstanbul ǅemal ß ẞ K Å",
    "ﬁne ﬂow ＡＢＣ full-width １２３ ½ Ⅻ ²",
    # punctuation runs and mixes
    "wow!!! really??? ...and... --- ***",
    "hello!world a.b,c;d:e (paren) [brack] {brace} <angle> \"dq\" #tag @at $5 %",
    "!!!",
    "a!b!!c",
    # numbers: every digit is its own piece
    "12345 3.14159 1,000,000 0x1F 2nd 1080p",
    "١٢٣ ٤٥٦ ۱۲۳ १२३",
    # apostrophes and contractions
    "don't it's we're I'll you'd I'm they've 'quoted' rock'n'roll",
    "DON'T IT'S WE'RE",
    "’curly’ quotes ‘here’ and “double”",
    "o'clock ''s '''",
    # special tokens written in the text
    "a <|endoftext|> b",
    "<|startoftext|>hello<|endoftext|>",
    "<|ENDOFTEXT|> upper case is not special",
    "x<|endoftext|>y<|startoftext|>z",
    "<|endoftext",
    # whitespace of every kind: tab, newline, CR, NBSP, ideographic, em space, NEL, ZWSP (not whitespace),
    # Mongolian vowel separator (no longer whitespace), BOM
    "tab\tnew\nline\r\nret",
    "nbsp\u00a0ideo\u3000em\u2003nel\u0085end",
    "zwsp\u200bjoin mvs\u180esep bom\ufeffx",
    # control characters and odd bytes; information separators (Python isspace, not Unicode White_Space); line and
    # paragraph separators; soft hyphen; private use; a noncharacter
    "bell\x07null\x00del\x7f",
    "fs\x1cgs\x1drs\x1eus\x1fend",
    "line\u2028para\u2029soft\u00adhyphen\ue000pua\uffffnon",
    # long single word, long text (truncated to 75 content tokens), mixed
    "a" * 200,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "word " * 90,
    "a photo of an astronaut riding a horse on mars, highly detailed, 8k, trending on artstation, by greg rutkowski",
    "Ünïcödé 🐱 中文 don't!!! 3.14 <|endoftext|> ok",
]

VARIANTS = {
    # SD 2.x / SD-Turbo / SDXS-0.9: pad "!" in tokenizer_config.json
    "pad_bang": ({"model_max_length": 77, "pad_token": "!", "bos_token": "<|startoftext|>",
                  "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}, None),
    # SD 1.x / SDXS-DreamShaper: pad <|endoftext|>
    "pad_eot": ({"model_max_length": 77, "pad_token": "<|endoftext|>", "bos_token": "<|startoftext|>",
                 "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}, None),
    # As stabilityai/stable-diffusion-2-1 ships it: tokenizer_config says <|endoftext|>, special_tokens_map.json says
    # "!" (and overrides it, since there is no added_tokens_decoder); tokens as AddedToken dicts, normalized true.
    "sd2_map_overrides": (
        {"add_prefix_space": False, "do_lower_case": True, "errors": "replace", "model_max_length": 77,
         "bos_token": {"__type": "AddedToken", "content": "<|startoftext|>", "lstrip": False, "normalized": True,
                       "rstrip": False, "single_word": False},
         "eos_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False, "normalized": True,
                       "rstrip": False, "single_word": False},
         "unk_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False, "normalized": True,
                       "rstrip": False, "single_word": False},
         "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"},
        {"bos_token": {"content": "<|startoftext|>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
         "eos_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
         "pad_token": "!",
         "unk_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}}),
    # As runwayml/stable-diffusion-v1-5 ships it: AddedToken dicts (normalized true) in tokenizer_config.json, plain
    # strings in special_tokens_map.json (which override them).
    "sd15_layout": (
        {"add_prefix_space": False, "do_lower_case": True, "errors": "replace", "model_max_length": 77,
         "name_or_path": "openai/clip-vit-large-patch14", "special_tokens_map_file": "./special_tokens_map.json",
         "bos_token": {"__type": "AddedToken", "content": "<|startoftext|>", "lstrip": False, "normalized": True,
                       "rstrip": False, "single_word": False},
         "eos_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False, "normalized": True,
                       "rstrip": False, "single_word": False},
         "unk_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False, "normalized": True,
                       "rstrip": False, "single_word": False},
         "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"},
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
         "unk_token": "<|endoftext|>"}),
    # The same tokenizer_config.json without special_tokens_map.json: eos/unk are normalized, pad (same text) is not.
    "sd15_no_map": (
        {"model_max_length": 77,
         "bos_token": {"__type": "AddedToken", "content": "<|startoftext|>", "lstrip": False, "normalized": True,
                       "rstrip": False, "single_word": False},
         "eos_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False, "normalized": True,
                       "rstrip": False, "single_word": False},
         "unk_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False, "normalized": True,
                       "rstrip": False, "single_word": False},
         "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}, None),
    # Tokens given as dicts in special_tokens_map.json with normalized true, pad "!" normalized true as well.
    "map_bang_normalized": (
        {"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"},
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
         "pad_token": {"content": "!", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}}),
    # A config with added_tokens_decoder: special_tokens_map.json is then ignored by transformers 5.
    "decoder_wins": (
        {"model_max_length": 77, "pad_token": "<|endoftext|>", "bos_token": "<|startoftext|>",
         "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer",
         "added_tokens_decoder": {
             "49406": {"content": "<|startoftext|>", "lstrip": False, "normalized": False, "rstrip": False,
                       "single_word": False, "special": True},
             "49407": {"content": "<|endoftext|>", "lstrip": False, "normalized": False, "rstrip": False,
                       "single_word": False, "special": True}}},
        {"pad_token": "!"}),
    # A shorter model_max_length (truncation and padding follow it).
    "max_len_16": ({"model_max_length": 16, "pad_token": "!", "bos_token": "<|startoftext|>",
                    "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}, None),
}


def main(vocab_dir, out_path):
    variants = []
    for name, (config, special_map) in VARIANTS.items():
        d = tempfile.mkdtemp(prefix="cliptok-")
        try:
            for f in ("vocab.json", "merges.txt"):
                shutil.copy(os.path.join(vocab_dir, f), d)
            json.dump(config, open(os.path.join(d, "tokenizer_config.json"), "w"), indent=2)
            if special_map is not None:
                json.dump(special_map, open(os.path.join(d, "special_tokens_map.json"), "w"), indent=2)
            tok = CLIPTokenizer.from_pretrained(d)
            n = tok.model_max_length
            ids = tok(TEXTS, padding="max_length", max_length=n, truncation=True).input_ids
            variants.append({"name": name, "tokenizer_config": config, "special_tokens_map": special_map,
                             "pad_token_id": tok.pad_token_id, "model_max_length": n, "ids": ids})
        finally:
            shutil.rmtree(d)
    out = {"made_with": f"transformers {transformers.__version__} CLIPTokenizer.from_pretrained (no tokenizer.json), "
                        "tokenizer(texts, padding='max_length', max_length=model_max_length, truncation=True)",
           "script": "scripts/golden/make_tokenizer_golden.py", "texts": TEXTS, "variants": variants}
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
