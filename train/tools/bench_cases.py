"""The cases ``bertsmith bench`` runs, named where the CLI can read them without torch."""

CASES = ("fixed", "variable", "long", "train")
ALIASES = {"mlm": "train"}  # the training case's name before 0.x; still accepted
# transformers' ``attn_implementation`` values for the bench's transformers side (--hf-attn)
HF_ATTENTION = ("sdpa", "eager", "flash_attention_2")
