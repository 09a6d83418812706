"""An earlier revision's DY-ReLU module, importable beside today's for side-by-side timings.

``legacy_dyrelu(rev)`` extracts that revision's layer files (``git archive``) into a temporary
package and returns its DyReLU class; ``swap_dyrelu(model, cls)`` replaces every DY-ReLU of a
model by one of ``cls`` with the same options and weights. Works for revisions whose layer is
the ``pose/models/dyrelu`` package, and for the earlier layout (``pose/models/activations.py``
+ ``dyrelu_function.py`` + ``dyrelu_native.py``). The copy's operator namespaces are renamed,
so that its operators and native kernels load beside today's.
"""
from __future__ import annotations

import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from torch import nn

ROOT = Path(__file__).resolve().parents[1]
FILES = ("activations.py", "dyrelu_function.py", "dyrelu_native.py", "dyrelu_kernels.c")


def _package_layout(rev: str) -> bool:
    listing = subprocess.run(["git", "ls-tree", "--name-only", rev, "pose/models/dyrelu/"],
                             cwd=ROOT, capture_output=True, check=True, text=True).stdout
    return bool(listing.strip())


def legacy_dyrelu(rev: str) -> type:
    package = f"legacy_dyrelu_{rev[:12]}"
    packaged = _package_layout(rev)
    if package not in sys.modules:
        paths = ["pose/models/dyrelu"] if packaged else [f"pose/models/{f}" for f in FILES]
        archive = subprocess.run(["git", "archive", rev, *paths],
                                 cwd=ROOT, capture_output=True, check=True).stdout
        folder = Path(tempfile.mkdtemp(prefix="legacy-dyrelu-"))
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(folder, filter="data")
        target = folder / package
        (folder / "pose" / "models" / ("dyrelu" if packaged else "")).rename(target)
        (target / "__init__.py").touch()
        renames = {"from pose.models import": f"from {package} import",
                   "pose.models.dyrelu": package,
                   "dyrelu_pose_": f"{package}_",  # the operator namespaces
                   'Library("pose", ': f'Library("{package}", ',
                   "torch.ops.pose.": f"torch.ops.{package}.",
                   '"pose::': f'"{package}::'}
        for path in target.iterdir():
            if path.suffix in (".py", ".cpp", ".c"):
                text = path.read_text()
                for old, new in renames.items():
                    text = text.replace(old, new)
                path.write_text(text)
        sys.path.insert(0, str(folder))
    return importlib.import_module(f"{package}.{'layer' if packaged else 'activations'}").DyReLU


def swap_dyrelu(model: nn.Module, cls: type) -> nn.Module:
    """Replace each DY-ReLU module of ``model`` (in place) by a ``cls`` with its options and
    weights."""
    from pose.models.dyrelu import DyReLU

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DyReLU):
                s = child.settings
                old = cls(child.channels, variant=child.variant, k=s.k, reduction=1,
                          lambda_a=s.lambda_a, lambda_b=s.lambda_b, tau=s.tau, gamma=s.gamma,
                          spatial=child.spatial)
                old.fc1 = child.fc1
                old.fc2 = child.fc2
                if child.variant == "c":
                    old.spatial_conv = child.spatial_conv
                setattr(parent, name, old.to(child.fc1.weight.device))
    return model
