"""What holds for the whole product: no pickle, every setting documented."""

from __future__ import annotations

import re

from conftest import ROOT


def test_no_pickle_anywhere_in_the_product() -> None:
    """Models are ONNX files and data is JSON, raw tensors, CSV or .npy without objects. The
    one exception is `train_and_save.py convert` (onnx_serving/model/convert/), which loads a
    user's scikit-learn pickle or TorchScript archive only with --trust, and is not in the
    bento."""
    root = ROOT
    sources = [root / "service.py", root / "train_and_save.py", *root.glob("onnx_serving/**/*.py")]
    convert = root / "onnx_serving" / "model" / "convert"
    assert '"onnx_serving/model/convert/"' in (root / "bentofile.yaml").read_text()
    assert "if not args.trust:" in (convert / "__init__.py").read_text()
    for path in sources:
        if convert in path.parents:
            continue
        text = path.read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text, path
        assert "cloudpickle" not in text and "import joblib" not in text, path


def test_the_readme_documents_every_setting_and_no_other() -> None:
    """onnx_serving/config.py is the one place settings live; the documentation's tables name
    each one's environment variable (Configuration, Operating it's Limits, Versions)."""
    from onnx_serving.config import Settings

    names = set()
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        names.add(alias.choices[0] if alias is not None else name.upper())
    root = ROOT
    readme = "\n".join(p.read_text() for p in [root / "README.md", *sorted(root.glob("docs/*.md"))])
    documented = set()
    for line in readme.splitlines():
        if line.startswith("| `") and "|" in line[1:]:
            first = line.split("|")[1]
            documented |= {v for v in re.findall(r"`([A-Z][A-Z0-9_]+)`", first)}
    others = {"BENTOML_HOME", "PORT"}  # read by BentoML and make, not by the service
    assert names - documented == set(), "settings the docs do not document"
    assert documented - names - others == set(), "documented variables that are not settings"
