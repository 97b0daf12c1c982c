"""How good is the latency cost model's predictor (grid measurements + bilinear interpolation)?

    python benchmarks/latency_predictor.py --model resnet50 --precision default --json OUT.json

For every decomposable layer of a torchvision model (224x224), the cost model measures its grid as the latency
budget does; then ``--points`` random off-grid ranks per layer and method (on the same rank multiple) are measured
and compared with the interpolation. Prints the error distribution; rows go to --json.
"""

import argparse
import pathlib
import random
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import quiet_nncf, write_and_print  # noqa: E402

import nncf  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from nncf.torch.model_creation import create_nncf_network  # noqa: E402

from nncf_tdplugin.decomposition.ranks import max_ranks  # noqa: E402
from nncf_tdplugin.latency_model import LatencyCostModel, LatencySettings, LayerSpec, predictor_error  # noqa: E402
from nncf_tdplugin.nncf_integration.graph_layers import find_weighted_layers  # noqa: E402
from nncf_tdplugin.rank_selection import RankConstraints  # noqa: E402
from nncf_tdplugin.rank_selection.options import rank_grid  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--precision", default="default", choices=("f32", "bf16", "default"))
    p.add_argument("--int8", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--points", type=int, default=2, help="random off-grid ranks per layer and method")
    p.add_argument("--json")
    a = p.parse_args()
    quiet_nncf()
    torch.set_num_threads(a.threads)
    rng = random.Random(0)
    net = create_nncf_network(getattr(torchvision.models, a.model)().eval(),
                              nncf.NNCFConfig.from_dict({"input_info": {"sample_size": [1, 3, 224, 224]}}))
    layers = [lyr for lyr in find_weighted_layers(net) if lyr.geometry is not None]
    cost = LatencyCostModel(LatencySettings(precision=a.precision, threads=a.threads, int8=a.int8))
    multiple = cost.probe_rank_multiple()
    constraints = RankConstraints(rank_multiple=multiple)
    points, seen = {}, set()
    for layer in layers[1:-1]:
        spec = LayerSpec.of(layer.module, layer.in_shape, layer.out_shape, int8=a.int8,
                            unsigned_input=layer.input_nonnegative)
        if spec.key in seen:
            continue
        seen.add(spec.key)
        shape = tuple(layer.module.weight.shape)
        methods = ("svd",) if isinstance(layer.module, torch.nn.Linear) or shape[2:] == (1, 1) else ("tucker2", "svd")
        allowed = {m: [rank_grid(f, constraints) for f in max_ranks(shape, m)] for m in methods}
        cost.add_layer(layer.module_name, spec, allowed)
        picks = []
        for m in methods:
            grid = cost.grids[(layer.module_name, m)]
            off = [[r for r in axis if r not in g] or axis for axis, g in zip(allowed[m], grid)]
            for _ in range(a.points):
                picks.append((m, tuple(rng.choice(axis) for axis in off)))
        points[layer.module_name] = picks
    cost.prepare()
    rows = predictor_error(cost, points)
    errors = np.array([abs(r["relative_error"]) for r in rows])
    summary = {"model": a.model, "precision": a.precision, "int8": a.int8, "threads": a.threads,
               "rank_multiple": multiple, "points": len(rows), "median_abs_rel_error": float(np.median(errors)),
               "p90_abs_rel_error": float(np.percentile(errors, 90)), "max_abs_rel_error": float(errors.max())}
    write_and_print(rows, ["layer", "method", "ranks", "predicted_ms", "measured_ms", "relative_error"], None)
    print(summary)
    if a.json:
        import json

        pathlib.Path(a.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
