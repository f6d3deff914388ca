"""The recorders' shared base, and the rule that instruments use the model's public names only."""

import ast
import json
import os

import pytest

import minibn
from minibn.measure import Recorder

PACKAGE = os.path.dirname(minibn.__file__)


class Counter(Recorder):
    def __init__(self, every=1):
        super().__init__("counter", every, {"steps": [], "values": []})

    def __call__(self, step, model, x, target, optimizer):
        self.records["steps"].append(step)
        self.records["values"].append([step, step * 2])


def test_result_and_state_are_copies_and_state_round_trips_through_json():
    a = Counter()
    for t in range(3):
        a(t, None, None, None, None)
    out = a.result()
    out["values"][0].append("changed")
    assert a.result() == {"steps": [0, 1, 2], "values": [[0, 0], [1, 2], [2, 4]]}
    b = Counter()
    b.load_state(json.loads(json.dumps(a.state())))
    b(3, None, None, None, None)
    a(3, None, None, None, None)
    assert b.result() == a.result() and (b.name, b.every) == ("counter", 1)
    with pytest.raises(KeyError):
        Counter().load_state({"steps": []})


@pytest.mark.parametrize("every", [0, 2.5, -1])
def test_every_must_be_a_positive_integer(every):
    with pytest.raises(ValueError, match=f"Counter: every must be a positive integer, got {every!r}"):
        Counter(every)


def private_uses(path):
    """``obj._name`` for any ``obj`` other than ``self`` (dunder names aside), as (line, text)."""
    with open(path) as f:
        tree = ast.parse(f.read(), str(path))
    return [(node.lineno, ast.unparse(node)) for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id == "self")]


@pytest.mark.parametrize("module", sorted(["train.py"] + [os.path.join("measure", f) for f in
                                                         os.listdir(os.path.join(PACKAGE, "measure"))
                                                         if f.endswith(".py")]))
def test_instruments_and_the_loop_touch_no_private_attribute(module):
    assert private_uses(os.path.join(PACKAGE, module)) == []


def test_the_private_attribute_check_can_fail(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f(model, self):\n    model._xp()\n    self._cache = 1\n    layer.__class__\n")
    assert private_uses(path) == [(2, "model._xp")]
