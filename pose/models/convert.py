"""DY-ReLU (or any activation of the slot) in any network: replace its activation call sites.

    from pose.models.convert import convert

    model = convert(torchvision.models.resnet18(), "dyrelu_b", torch.randn(1, 3, 224, 224))
    print(model.conversion)  # what was replaced, at how many channels; params and MAdds

A *call site* is one place where ``forward`` runs an activation: a module call (``self.relu``),
or a function (``F.relu``, ``torch.relu``, ``x.relu()``). One module may be called at several
sites, as torchvision's ResNet calls ``self.relu`` twice per block; a DY-ReLU has parameters
sized by its channels, so every site gets a layer of its own. Module hooks see modules only,
so the model is traced with torch.fx, which records every call; the channels of each site come
from running the example input through the traced graph (``ShapeProp``, in eval mode, so
BatchNorm statistics do not move). The result is a ``torch.fx.GraphModule`` with the same
submodules and parameters, a new layer per replaced site (named ``act_<site>``), and a
``conversion`` report.

Which activations count is ``include``: kinds from ``KINDS`` (ReLU and ReLU6 by default,
Hardswish only when asked). Which sites to leave is ``exclude``: module paths (shell-style
patterns, matched against the site's path and every module around it) or module types (a
site inside, or made by, a module of that type). A site whose input is not (N, C, H, W) is
kept and reported. A model torch.fx cannot trace (data-dependent control flow, say) raises
one ``ConversionError`` naming the innermost module being traced when it failed.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from pose.errors import PoseError
from pose.models.activations import make_activation
from pose.models.dyrelu import DyReLU

# kind -> (module types, functions, tensor methods) that run it
KINDS: dict[str, tuple[tuple[type, ...], tuple[Any, ...], tuple[str, ...]]] = {
    "relu": ((nn.ReLU,), (F.relu, F.relu_, torch.relu, torch.relu_), ("relu", "relu_")),
    "relu6": ((nn.ReLU6,), (F.relu6,), ()),
    "hardswish": ((nn.Hardswish,), (F.hardswish,), ()),
}
DEFAULT_KINDS = ("relu", "relu6")


class ConversionError(PoseError, ValueError):
    """The model cannot be converted; the message names the part at fault."""


@dataclass(frozen=True)
class CallSite:
    """One activation call site. ``path``: the activation module's path, or for a function
    the path of the module whose forward calls it ('' for the top level) and the function."""
    name: str  # the node's name in the traced graph; the new layer is act_<name>
    path: str
    kind: str
    shape: tuple[int, ...]  # the example input's shape at this site

    @property
    def channels(self) -> int:
        return self.shape[1]


@dataclass
class Conversion:
    """What ``convert`` did: the sites replaced, those kept (and why), and the model's
    parameters and MAdds (``pose.complexity``) at the example input's shape, before and
    after."""
    act: Any
    replaced: list[CallSite] = field(default_factory=list)
    kept: list[tuple[CallSite, str]] = field(default_factory=list)
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"{len(self.replaced)} call sites replaced by {self.act}, "
                 f"{len(self.kept)} kept", "", "| call site | kind | channels | new layer |",
                 "|---|---|---|---|"]
        lines += [f"| {s.path} | {s.kind} | {s.channels} | act_{s.name} |" for s in self.replaced]
        lines += [f"| {s.path} | {s.kind} | - | kept: {why} |" for s, why in self.kept]
        if self.before and self.after:
            lines += ["", "| | params | MAdds |", "|---|---|---|"]
            for label, counts in (("before", self.before), ("after", self.after)):
                lines.append(f"| {label} | {counts['params']:,} | {counts['madds']:,} |")
        return "\n".join(lines)


class _Tracer(fx.Tracer):
    """torch.fx's tracer that keeps layers of this package whole and remembers which module
    was being traced when tracing failed."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, DyReLU) or super().is_leaf_module(module, qualified_name)

    def call_module(self, module, forward, args, kwargs):
        try:
            return super().call_module(module, forward, args, kwargs)
        except Exception as error:
            if not hasattr(error, "_pose_module"):
                error._pose_module = (self.path_of_module(module), type(module).__name__)
            raise


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` as a torch.fx GraphModule; a failure is one ConversionError."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as error:
        path, kind = getattr(error, "_pose_module", ("", type(model).__name__))
        where = f"module '{path}' ({kind})" if path else f"the top-level forward ({kind})"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(f"torch.fx cannot trace {type(model).__name__}: it failed in "
                              f"{where}: {first}") from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _kind(node: fx.Node, modules: Mapping[str, nn.Module], kinds: Iterable[str]):
    for kind in kinds:
        types, functions, methods = KINDS[kind]
        if node.op == "call_module" and type(modules[node.target]) in types:
            return kind
        if node.op == "call_function" and node.target in functions:
            return kind
        if node.op == "call_method" and node.target in methods:
            return kind
    return None


def _site_paths(node: fx.Node) -> tuple[str, list[str], list[type]]:
    """(the site's path, the paths around it, the module types around it) from the module
    stack torch.fx records for each node."""
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    paths = [path for path, _ in stack]
    types = [kind for _, kind in stack]
    if node.op == "call_module":
        return str(node.target), paths, types
    function = getattr(node.target, "__name__", str(node.target))
    where = paths[-1] if paths else ""
    return f"{where}:{function}" if where else function, paths, types


def _excluded(path: str, around: list[str], types: list[type], module: nn.Module | None,
              exclude: Iterable[str | type]) -> bool:
    for rule in exclude:
        if isinstance(rule, type):
            if any(issubclass(t, rule) for t in types if isinstance(t, type)) or \
                    isinstance(module, rule):
                return True
        elif any(fnmatch.fnmatchcase(p, rule) for p in (path, *around)):
            return True
    return False


def convert(model: nn.Module, act: str | Mapping[str, Any], example_input: torch.Tensor,
            include: Iterable[str] = DEFAULT_KINDS,
            exclude: Iterable[str | type] = ()) -> fx.GraphModule:
    """``model`` with each activation call site of the ``include`` kinds replaced by a new
    layer of the slot (``act``: a spec such as ``"dyrelu_b"`` or ``{"name": "dyrelu_c",
    "k": 3}``, built by ``pose.models.make_activation`` at the site's channels), except the
    sites ``exclude`` names (module path patterns or module types). The model's own modules and
    parameters are shared, not copied. Returns the traced model, with the report as
    ``.conversion`` (``Conversion``)."""
    from pose.complexity import complexity

    include = tuple(include)
    unknown = [kind for kind in include if kind not in KINDS]
    if unknown:
        raise ConversionError(f"unknown activation kind(s) {', '.join(map(repr, unknown))} in "
                              f"include; known: {', '.join(KINDS)}")
    exclude = tuple(exclude)
    make_activation(act, 8)  # a bad spec fails here, before any tracing
    shape = tuple(example_input.shape)
    report = Conversion(act, before=complexity(model, shape))

    traced = trace(model)
    was_training = traced.training
    traced.eval()
    with torch.no_grad():
        ShapeProp(traced).propagate(example_input)
    traced.train(was_training)

    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        kind = _kind(node, modules, include)
        if kind is None:
            continue
        path, around, types = _site_paths(node)
        meta = node.args[0].meta.get("tensor_meta") if node.args else None
        site = CallSite(node.name, path, kind, tuple(meta.shape) if meta is not None else ())
        module = modules.get(node.target) if node.op == "call_module" else None
        if _excluded(path, around, types, module, exclude):
            report.kept.append((site, "excluded"))
            continue
        if len(site.shape) != 4:
            report.kept.append((site, f"input {site.shape} is not (N, C, H, W)"))
            continue
        layer = make_activation(act, site.channels).to(example_input.device)
        traced.add_submodule(f"act_{node.name}", layer)
        with traced.graph.inserting_after(node):
            new = traced.graph.call_module(f"act_{node.name}", (node.args[0],))
        node.replace_all_uses_with(new)
        traced.graph.erase_node(node)
        report.replaced.append(site)
    traced.delete_all_unused_submodules()
    traced.recompile()
    report.after = complexity(traced, shape)
    traced.conversion = report
    return traced


__all__ = ["CallSite", "Conversion", "ConversionError", "DEFAULT_KINDS", "KINDS", "convert",
           "trace"]
