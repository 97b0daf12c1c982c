"""Deterministic stand-ins for OpenVINO timing, for tests whose assertions must not move with the machine's load."""


def analytic_latency(monkeypatch) -> None:
    """Replace OpenVINO timing in the latency cost model by a deterministic stand-in: 2 us per layer node plus
    10 ns per MAC (the factor layers of a decomposition each pay the node cost). Tests whose assertions depend on
    how far the smallest ranks reach use it, so a loaded CI machine cannot move the outcome."""
    from nncf_tdplugin.latency_model import cost_model
    from nncf_tdplugin.rank_selection.cost import LayerGeometry, factorized_macs

    def geometry(spec):
        if spec.kind == "linear":
            return LayerGeometry("linear", spec.out_channels, spec.in_channels, 1, 1, (spec.positions, 1),
                                 (spec.positions, 1), spec.bias)
        out_hw = tuple((spec.in_hw[a] + spec.pads_begin[a] + spec.pads_end[a]
                        - spec.dilation[a] * (spec.kernel[a] - 1) - 1) // spec.stride[a] + 1 for a in range(2))
        return LayerGeometry("conv", spec.out_channels, spec.in_channels, *spec.kernel, spec.in_hw, out_hw, spec.bias)

    nodes = {"dense": 1, "svd": 2, "tucker2": 3, "cp": 4}

    def fake_measure(specs, cache, **_):
        todo = [s for s in specs if s.key not in cache]
        for s in todo:
            cache.put(s.key, 2e-3 * nodes[s.method] + 1e-8 * factorized_macs(geometry(s), s.method, s.ranks))
        cache.runtime = {"runtime_precision": "f32", "threads": 1}
        cache.save()
        return len(todo)

    monkeypatch.setattr(cost_model, "measure_specs", fake_measure)
