"""fuse-ort: transformer blocks -> ONNX Runtime contrib ops (Attention, SkipLayerNormalization, BiasGelu...).

ONNX Runtime's fastest CPU kernels for transformers are its ``com.microsoft`` contrib
ops, which is what Olive's ORT transformer optimization produces. Those ops run only
in ONNX Runtime, so the pass does nothing unless ``ctx.backend`` says the model is
compiled for the onnxruntime backend; the driver adds it to the default pipeline for
that backend only.

The rules are onnxscript's ``onnxscript.rewriter.ort_fusions`` (the fusions behind its
``optimize_for_ort``), not ``onnxruntime.transformers.optimizer``, because:

- they rewrite onnx-ir models in place, like every other edgeopt pass: no ModelProto
  round trip (which lazy external weights and >2 GB models make costly), no
  ``model_type``/``num_heads``/``hidden_size`` to guess per model;
- on the zoo's TorchScript-exported opset-17 ViT-Ti/16 they fuse all 12 attention blocks
  (onnxruntime.transformers fused 11 of 12, leaving the first as 15 plain nodes) in about
  a quarter of the time (0.6 s against 2.3 s on the cleaned model).

What is ours: the order of the stages (onnxscript's ``fuse_xformers`` order without its
pre-optimization, which edgeopt's cleanup already did, and without the fusions whose
ops have no ONNX Runtime CPU kernel, e.g. GroupNorm); one canonicalization first,
``Add(constant, x) -> Add(x, constant)``, because the TorchScript exporter writes
``nn.Linear`` as ``Add(bias, MatMul)`` while onnxscript's MHA-bias and SkipLayerNormalization
bias rules match ``Add(MatMul, bias)`` only (their ``commute`` option cannot be used:
onnxscript 0.7 fails to clone an ``OrValue`` without a tag); and a transaction: the
fusions run on a clone, which replaces the graph only when every contrib op is float32
(ONNX Runtime's CPU kernels) and no intermediate fusion op is left over.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, RemoveUnusedOpsetsPass
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase, RewriteRuleSet
from onnxscript.rewriter.ort_fusions import (
    attention,
    bias_gelu,
    cos_sin_cache,
    erfgelu,
    fused_matmul_rule_sets,
    gelu,
    gqa,
    gqa_packed_qkv,
    mha,
    mha_bias,
    mha_scale,
    rms_normalization,
    rotary_embedding,
    sdpa,
    sdpa_via_mha,
    skip_normalization,
)

from edgeopt.ir.errors import PipelineError
from edgeopt.passes.base import Pass, PassContext, PassResult
from edgeopt.passes.fusion.fuse import needed_ops, ops_in
from edgeopt.passes.options import option
from edgeopt.passes.registry import register_pass

CONTRIB_DOMAIN = "com.microsoft"
BACKEND = "onnxruntime"
# onnxscript's fusion rules pass through ops of this domain (SDPA) that no runtime has;
# a later rule of the same stage must replace every one of them.
_INTERMEDIATE_DOMAIN = "ai.onnxruntime._fusion"


class _ConstantSecond(RewriteRuleClassBase):
    """Add(constant, x) -> Add(x, constant): the operand order the library's bias patterns match (exact in IEEE)."""

    def pattern(self, op, a, b):
        return op.Add(a, b)

    def check(self, context, a: ir.Value, b: ir.Value) -> MatchResult:
        result = MatchResult()
        if a.const_value is None or b.const_value is not None:
            return result.fail("the first operand is not the only constant")
        return result

    def rewrite(self, op, a, b):
        return op.Add(b, a)


_CANONICALIZE = RewriteRuleSet([_ConstantSecond.rule()])


def _rules(rule_set: RewriteRuleSet) -> RewriteRuleSet:
    return RewriteRuleSet(list(rule_set.rules))


# Stage name (what the options name) -> rule sets applied in this order; "reinfer" re-runs
# shape inference, which the attention rules need for the nodes the SDPA rule created.
# The module-private rule sets (_mha_scale_rules, _rules) have no public alias in onnxscript 0.7.
_REINFER = "reinfer"
STAGES: dict[str, tuple[RewriteRuleSet | str, ...]] = {
    "gelu": (_rules(erfgelu.rules),),
    "rms-norm": (_rules(rms_normalization.rms_normalization_ruleset),),
    "skip-layer-norm": (_rules(skip_normalization.skip_layer_normalization_ruleset),
                        _rules(skip_normalization.skip_rms_normalization_ruleset)),
    "rotary-embedding": (_rules(rotary_embedding.rotary_embedding_rules),
                         _rules(cos_sin_cache.cos_sin_cache_rules),
                         _rules(rotary_embedding.partial_embedding_rules)),
    "attention": (_rules(sdpa.sdpa_rules), _REINFER,
                  _rules(gqa.gqa_rules), _rules(gqa_packed_qkv.fuse_qkv_gqa_rules),
                  _rules(mha.mha_rules_with_past), _rules(mha.mha_rules_no_past),
                  _rules(mha_scale._mha_scale_rules), _rules(mha_bias.mha_bias_rules),
                  _rules(attention.attention_rules), _rules(sdpa_via_mha._rules)),
    "bias-gelu": (_rules(gelu.gelu_rules), _rules(bias_gelu.bias_gelu_rules)),
    "fused-matmul": (fused_matmul_rule_sets.fused_matmul_rule_sets(),),
}


# Per stage, the op sets its rules need: a model with none of them skips the pass cheaply.
_NEEDED: dict[str, list[frozenset[tuple[str, str]]]] = {
    stage: [needed_ops(rule) for step in steps if not isinstance(step, str) for rule in step.rules]
    for stage, steps in STAGES.items()
}


@dataclass
class FuseOrtOptions:
    # skip-layer-norm is off unless asked for: ONNX Runtime 1.32's CPU SkipLayerNormalization
    # kernel took 0.29 ms on the zoo BERT's [1, 128, 512] where Add + LayerNormalization took 0.05 ms
    # (AMD EPYC, AVX-512, one thread), and fusing it made ViT-Ti/16 17.0 ms instead of 14.0 ms.
    disable: list[str] = option(default_factory=lambda: ["skip-layer-norm"],  # noqa: RUF009
                                help=f"fusion stages to skip ({', '.join(STAGES)}; default: skip-layer-norm,"
                                     " whose CPU kernel is slower than Add + LayerNormalization)")


@register_pass("fuse-ort")
class FuseOrtContrib(Pass):
    """Fuse attention, skip+LayerNorm and GELU blocks into ONNX Runtime contrib ops (onnxruntime backend only)."""

    Options = FuseOrtOptions
    min_opset = 13  # the library's replacements write opset-13 forms (Squeeze/Unsqueeze axes as inputs)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        unknown = sorted(set(self.options.disable) - set(STAGES))
        if unknown:
            raise PipelineError(f"pass '{self.name}': unknown stage(s) {', '.join(unknown)}"
                                f" in disable (known: {', '.join(STAGES)})")
        if ctx.backend != BACKEND:
            return PassResult(model, False, notes=[
                f"skipped: backend is {ctx.backend or 'not chosen yet'}; contrib ops run only in ONNX Runtime"])
        stages = [s for s in STAGES if s not in self.options.disable]
        present = ops_in(model)
        if not any(needed <= present for stage in stages for needed in _NEEDED[stage]):
            return PassResult(model, False, notes=["no transformer pattern can match (their ops are absent)"])
        ctx.analyses.get(model, "shapes")  # annotates the values; the rules check shapes
        before = _contrib_ops(model)
        work = model.clone()
        applied = _apply_stages(work, stages, lambda: _reinfer(ctx, work))
        if not any(applied.values()):
            return PassResult(model, False, notes=["no transformer pattern matched"])
        problem = _unrunnable(work)
        if problem:
            return PassResult(model, False, notes=[f"kept the model unchanged: {problem}"])
        RemoveUnusedNodesPass()(work)
        RemoveUnusedOpsetsPass()(work)
        # Adopt the fused graph (it carries the opset imports); the model object stays the same.
        model.graph = work.graph
        after = _contrib_ops(work)
        counts = {op: after[op] - before.get(op, 0) for op in sorted(after) if after[op] != before.get(op, 0)}
        notes = [", ".join(f"{stage} x{n}" for stage, n in applied.items() if n) + " rule application(s)"]
        return PassResult(model, True, counts=counts, notes=notes)


def _apply_stages(model: ir.Model, stages: list[str], reinfer: Callable[[], object]) -> dict[str, int]:
    """Apply the stages' rule sets in order; rules whose ops the model lacks are not tried (matching is costly)."""
    applied: dict[str, int] = {}
    _CANONICALIZE.apply_to_model(model)
    present = ops_in(model)
    for stage in stages:
        applied[stage] = 0
        for step in STAGES[stage]:
            if isinstance(step, str):  # _REINFER
                if applied[stage]:
                    reinfer()
                continue
            rules = [rule for rule in step.rules if needed_ops(rule) <= present]
            count = RewriteRuleSet(rules).apply_to_model(model) if rules else 0
            if count:
                applied[stage] += count
                present = ops_in(model)
    return applied


def _reinfer(ctx: PassContext, model: ir.Model) -> None:
    ctx.analyses.invalidate(model)
    ctx.analyses.get(model, "shapes")


def _contrib_ops(model: ir.Model) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.all_nodes() if node.domain == CONTRIB_DOMAIN)


def _unrunnable(model: ir.Model) -> str:
    """Why the fused model could not run in ONNX Runtime on CPU ('' when it can)."""
    for node in model.graph.all_nodes():
        if node.domain == _INTERMEDIATE_DOMAIN:
            return f"onnxscript left the intermediate op {node.op_type} ({node.name}) unfused"
        if node.domain == CONTRIB_DOMAIN:
            for value in [*node.inputs, *node.outputs]:
                if value is not None and value.dtype is not None and value.dtype.is_floating_point() \
                        and value.dtype != ir.DataType.FLOAT:
                    return f"{node.op_type} ({node.name}) would compute in {value.dtype.name.lower()}," \
                           " and ONNX Runtime's CPU contrib kernels are float32"
    return ""
