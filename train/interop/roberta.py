"""RoBERTa (``model_type: roberta``): BERT's body, positions counted after the pad id.

RoBERTa derives position ids from ``input_ids != pad_token_id``: position ``i`` of a
sequence is row ``pad_token_id + 1 + i`` of the position table, so the spec's learned
positions carry that ``offset`` and ``max_seq_len`` is the table's size less it.
"""

from __future__ import annotations

from bertsmith.train.interop.bert import Bert


class Roberta(Bert):
    model_type = "roberta"
    title = "RoBERTa"
    class_prefix = "Roberta"
    base_prefix = "roberta."
    pretraining_class = None
    bench_shapes = None
    mlm_head = {
        "dense": "lm_head.dense",
        "norm": "lm_head.layer_norm",
        "bias": "lm_head.bias",
        "decoder": "lm_head.decoder",
    }
    head_activation = "gelu"  # RobertaLMHead applies gelu whatever hidden_act says

    def position_offset(self, cfg) -> int:
        return cfg.pad_token_id + 1

    def config(self, spec, specials: dict[str, int]) -> dict:
        return dict(super().config(spec, specials), **self.token_ids(spec, specials, bos="cls", eos="sep"))

    def notes(self, arch: str, training: list[str]) -> list[str]:
        return [
            *super().notes(arch, training),
            "RoBERTa derives position ids from `input_ids != pad_token_id`: pad with the pad token, "
            "and never use it inside a sequence.",
        ]


FAMILY = Roberta()
