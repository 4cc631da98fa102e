"""IOI head classes from attention evidence: one class per query position a head acts at."""

from interp.circuits.classify import IOI_BEHAVIOURS, behaviour_classes, classify


def _evidence(**attn: float) -> dict[str, float]:
    ev = {name: attn.get(name, 0.0) for name in IOI_BEHAVIOURS}
    return ev | {f"uniform_{name}": 0.1 for name in IOI_BEHAVIOURS}


def test_behaviour_classes_per_position():
    evidence = {
        "a0.0": _evidence(previous_token=0.9),
        "a1.0": _evidence(induction=0.5, mover=0.6, s_inhibition=0.1),  # induction at S2, mover at END
        "a2.0": _evidence(s_inhibition=0.95),
        "a3.0": _evidence(mover=0.15, induction=0.15),  # under 2x uniform everywhere: no class
    }
    got = behaviour_classes(evidence)
    assert got["previous_token"] == ["a0.0"]
    assert got["induction"] == ["a1.0"] and got["mover"] == ["a1.0"]
    assert got["s_inhibition"] == ["a2.0"]
    assert "a3.0" not in sum(got.values(), [])
    # each listed class is what `classify` says at that position
    assert classify(evidence["a1.0"], "S2") == "induction" and classify(evidence["a1.0"], "END") == "mover"
    assert behaviour_classes(evidence, min_ratio=100.0) == {name: [] for name in IOI_BEHAVIOURS}
