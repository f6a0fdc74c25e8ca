"""The docstring examples of the public ops run (doctest) and print what they show.

CI runs them with the rest of the suite (.ci/run: pytest). A module of
jaxset.ops whose public function gains an example is covered without a change
here; the count below makes an example that silently stops being collected fail.
"""
import doctest
import importlib
import pkgutil

import pytest

import jaxset.ops

MODULES = sorted(m.name for m in pkgutil.iter_modules(jaxset.ops.__path__)
                 if not m.name.startswith("_"))


@pytest.mark.parametrize("name", MODULES)
def test_doctests_of_jaxset_ops(name):
  module = importlib.import_module(f"jaxset.ops.{name}")
  finder = doctest.DocTestFinder(exclude_empty=True)
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
  for test in finder.find(module, globs={**vars(module)}):
    runner.run(test)
  res = runner.summarize(verbose=False)
  assert res.failed == 0, f"{res.failed} doctest example(s) of jaxset.ops.{name} failed"


def test_the_public_ops_have_examples():
  examples = 0
  for name in MODULES:
    module = importlib.import_module(f"jaxset.ops.{name}")
    examples += sum(len(t.examples) for t in doctest.DocTestFinder().find(module))
  assert examples >= 20, examples
