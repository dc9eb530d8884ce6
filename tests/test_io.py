"""Model directories: save/load round trips, refusal of tampered or mismatched files."""

import pytest
import torch
import yaml

from bertsmith import registry
from bertsmith.registry.errors import SpecError


def _model(*overrides, head=None):
    spec = registry.compose("bert-tiny", ["model.n_layers=2", *overrides])
    return registry.build(spec, head=head).eval()


def test_save_load_same_outputs_and_tied_weights(tmp_path):
    model = _model()
    registry.save(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.safetensors", "spec.yaml"]
    loaded = registry.load(tmp_path / "m").eval()
    assert loaded.spec == model.spec
    ids = torch.randint(3, 8000, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert loaded.head.decoder.weight is loaded.encoder.embeddings.tok.weight


def test_saved_spec_records_the_built_head(tmp_path):
    model = _model(head="classification")
    registry.save(model, tmp_path / "m")
    data = yaml.safe_load((tmp_path / "m" / "spec.yaml").read_text())
    assert data["head"]["kind"] == "classification"
    assert list(data["positional"])[0] == "kind"
    assert registry.load(tmp_path / "m").head.classifier.out_features == 2


def test_tampered_spec_is_refused_like_a_recipe(tmp_path):
    registry.save(_model(), tmp_path / "m")
    path = tmp_path / "m" / "spec.yaml"
    data = yaml.safe_load(path.read_text())
    data["mlp"]["kind"] = "os.system"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as e:
        registry.load(tmp_path / "m")
    assert e.value.lines == ["spec.mlp.kind: given 'os.system', allowed: mlp, glu"]


def test_weights_that_do_not_fit_the_spec_are_refused(tmp_path):
    registry.save(_model(), tmp_path / "a")
    registry.save(_model("model.d_ff=512"), tmp_path / "b")
    (tmp_path / "b" / "spec.yaml").replace(tmp_path / "a" / "spec.yaml")
    with pytest.raises(SpecError, match="model.safetensors"):
        registry.load(tmp_path / "a")


def test_save_leaves_no_temporary_files(tmp_path):
    registry.save(_model(), tmp_path / "m")
    registry.save(_model(), tmp_path / "m")  # overwrite in place
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "text, why",
    [
        ("name: a\nname: b\n", "duplicate key 'name' at line 2"),
        ("a: &a [x, x]\nb: [*a, *a]\n", "an alias (*a); write the value out at line 2"),
    ],
)
def test_spec_yaml_with_a_duplicate_key_or_an_alias_is_one_line(tmp_path, text, why):
    """SECURITY.md: a key given twice is an error (PyYAML would keep the last), and an alias is
    refused before it is expanded (nested aliases make a "billion laughs" document)."""
    (tmp_path / "spec.yaml").write_text(text)
    with pytest.raises(SpecError) as e:
        registry.load_spec(tmp_path / "spec.yaml")
    assert e.value.lines == [f"spec: given {str(tmp_path / 'spec.yaml')!r}, allowed: valid YAML ({why})"]


def test_a_billion_laughs_recipe_is_refused_at_once(tmp_path):
    """Nine lines of nested aliases (9**9 nodes expanded) are one line, before any expansion."""
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpecError) as e:
        registry.validate(str(path), [])
    assert e.value.lines == [
        f"model: given {str(path)!r}, allowed: valid YAML (an alias (*a0); write the value out at line 2)"
    ]
