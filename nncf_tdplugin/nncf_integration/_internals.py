"""The only code that touches NNCF 2.19's private attributes. Keep it here, small and tested
(tests/test_nncf_internals.py), so an NNCF upgrade breaks in one place.

Why it is needed: ``create_compressed_model`` wraps Conv2d/Linear into NNCF modules and traces the ORIGINAL graph
once, before any algorithm runs; later algorithms (quantization) compute their insertion points from that frozen
graph and from the cached map of NNCF modules. The decomposition restructures the model inside its
``get_transformation_layout`` (the only hook that runs before later algorithms), so afterwards both caches must be
refreshed, exactly as ``NNCFNetworkInterface.__init__`` builds them.
"""

import dataclasses
from typing import Optional

from nncf.common.graph.definitions import MODEL_INPUT_OP_NAME, MODEL_OUTPUT_OP_NAME
from nncf.common.statistics import NNCFStatistics
from nncf.torch.dynamic_graph.context import TracingContext
from nncf.torch.dynamic_graph.graph import ShapeIgnoringTensorMetaComparator
from nncf.torch.dynamic_graph.graph_tracer import GraphTracer
from nncf.torch.graph.graph_builder import GraphConverter
from nncf.torch.nncf_module_replacement import replace_modules_by_nncf_modules
from nncf.torch.nncf_network import NNCFNetwork, PTGraphPair


def refresh_after_restructuring(model: NNCFNetwork) -> None:
    """Re-collect the NNCF module map and re-trace the original graph after modules were replaced in place.

    The new factor layers must already be NNCF modules (``nncf_module_from``): nothing new is wrapped here.
    """
    iface = model.nncf
    _, iface._nncf_replaced_modules = replace_modules_by_nncf_modules(
        model, ignored_scopes=iface._ignored_scopes, target_scopes=iface._target_scopes
    )
    context = TracingContext()
    context.add_node_comparators([MODEL_INPUT_OP_NAME], ShapeIgnoringTensorMetaComparator())
    context.add_node_comparators([MODEL_OUTPUT_OP_NAME], ShapeIgnoringTensorMetaComparator())
    if iface._scopes_without_shape_matching:
        context.add_node_comparators(iface._scopes_without_shape_matching, ShapeIgnoringTensorMetaComparator())
    # NNCFNetwork.forward traces into ``iface._compressed_context`` (and wraps inputs/outputs itself), so the
    # fresh context stands in for it during this one trace.
    forward_fn = iface._get_dummy_forward_fn_for_graph_building(with_input_tracing=False, with_output_tracing=False)
    compressed_context = iface._compressed_context
    iface._compressed_context = context
    try:
        dynamic_graph = GraphTracer(forward_fn).trace_graph(
            model, context, as_eval=True, trace_parameters=iface.trace_parameters
        )
    finally:
        iface._compressed_context = compressed_context
    iface._original_graphs_pair = PTGraphPair(
        dynamic_graph=dynamic_graph, nncf_graph=GraphConverter.convert(dynamic_graph, iface.trace_parameters)
    )
    iface.rebuild_graph()


def add_statistics_slot(algorithm_name: str) -> None:
    """Give ``NNCFStatistics`` (a fixed dataclass) a field for this algorithm, so the composite controller's
    ``statistics()`` can register ours next to quantization's. Idempotent."""
    if algorithm_name in NNCFStatistics.__dataclass_fields__:
        return
    slot = dataclasses.field(default=None)
    slot.name = algorithm_name
    slot.type = Optional[object]
    slot._field_type = dataclasses._FIELD  # what dataclasses.fields() filters on
    NNCFStatistics.__dataclass_fields__[algorithm_name] = slot
    setattr(NNCFStatistics, algorithm_name, None)


def free_kd_loss_storage(model) -> None:
    """Drop the knowledge-distillation loss NNCF keeps from the last training forward (a tensor with a graph, which
    ``copy.deepcopy`` refuses, so ``strip(do_copy=True)`` after KD training would fail). Harmless without KD: the
    next training forward stores a new one."""
    handler = getattr(getattr(model, "nncf", None), "_kd_loss_handler", None)
    if handler is not None:
        handler.zero_kd_loss()
