"""The README's preset commands are the configs' own (their docstrings), and they parse."""
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def commands(text: str) -> list[str]:
  """`python -m ...` command lines of a text, continuation lines joined, comments cut."""
  lines, out, i = text.splitlines(), [], 0
  while i < len(lines):
    line = lines[i].strip()
    if line.startswith("python -m "):
      while line.endswith("\\") and i + 1 < len(lines):
        i += 1
        line = line[:-1] + " " + lines[i].strip()
      out.append(" ".join(re.sub(r"\s+#.*$", "", line).split()))
    i += 1
  return out


# The configs whose preset commands this file holds to the README (the re-ID,
# video re-ID and place methods).
CONFIGS = ("qan", "casn", "netvlad")


def _preset_commands():
  found = []
  for cmd in commands((ROOT / "README.md").read_text()):
    m = re.search(r"--config=configs/(\w+)\.py:(\w+)", cmd)
    if m and m.group(1) in CONFIGS:
      found.append((m.group(1), m.group(2), cmd))
  return found


def test_readme_names_the_pretrained_presets():
  named = {(c, p) for c, p, cmd in _preset_commands() if "--config.model.pretrained=" in cmd}
  assert {("netvlad", "pitts30k"), ("casn", "market1501"), ("qan", "mars")} <= named


@pytest.mark.parametrize("config,preset,cmd", _preset_commands())
def test_readme_preset_command_is_in_the_config_docstring(config, preset, cmd):
  doc = importlib.import_module(f"configs.{config}").__doc__
  assert cmd in commands(doc), f"README runs `{cmd}`; configs/{config}.py's docstring does not"


@pytest.mark.parametrize("config", CONFIGS)
def test_docstring_commands_parse(config):
  """Every --config.<key>=... of a docstring command names a key of its preset."""
  module = importlib.import_module(f"configs.{config}")
  cmds = [c for c in commands(module.__doc__) if c.startswith("python -m train.")]
  assert cmds
  for cmd in cmds:
    preset = re.search(r"--config=configs/\w+\.py(?::(\w+))?", cmd).group(1)
    c = module.get_config(preset)
    for key in re.findall(r"--config\.([\w.]+)=", cmd):
      node = c
      for part in key.split("."):
        assert part in node, f"{cmd}: config has no key {key}"
        node = node[part]
    if preset:
      assert "pretrained" in c.model, f"configs/{config}.py:{preset} lacks model.pretrained"
